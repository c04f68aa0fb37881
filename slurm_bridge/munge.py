"""Decoding MUNGE credentials with libmunge (through ctypes: no compiled extension, no new package).

munged on this host checks the credential (the cluster's shared key, its time to live) and refuses one
it has seen before, and tells who made it: the uid of the process that called ``munge``. libmunge is
on every Slurm host (slurm's auth/munge uses it); Debian's package is ``libmunge2``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_MUNGE_OPT_SOCKET: Final = 8  # enum munge_opt in munge.h
_LIBRARY: Final = "libmunge.so.2"


class CredentialError(ValueError):
    """munged refused the credential (invalid, expired, replayed, another key)."""


@dataclass(frozen=True)
class Credential:
    payload: bytes
    uid: int
    gid: int


class MungeDecoder:
    """``decode`` one credential at a time (one context; call it from one thread at a time)."""

    def __init__(self, socket: Path | None = None, library: str = _LIBRARY) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("munge") or library)
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        lib.munge_decode.argtypes = [
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
        ]
        lib.munge_strerror.restype = ctypes.c_char_p
        self._lib = lib
        self._free = ctypes.CDLL(None).free
        self._free.argtypes = [ctypes.c_void_p]
        self._ctx = lib.munge_ctx_create()
        if not self._ctx:
            raise MemoryError("munge_ctx_create failed")
        if socket is not None and lib.munge_ctx_set(self._ctx, _MUNGE_OPT_SOCKET, str(socket).encode()) != 0:
            raise ValueError(f"cannot use the munge socket {socket}")

    def decode(self, credential: bytes) -> Credential:
        buffer, length, uid, gid = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_uint(), ctypes.c_uint()
        error = self._lib.munge_decode(
            credential, self._ctx, ctypes.byref(buffer), ctypes.byref(length), ctypes.byref(uid), ctypes.byref(gid)
        )
        try:
            if error != 0:
                raise CredentialError(self._lib.munge_strerror(error).decode(errors="replace"))
            payload = ctypes.string_at(buffer, length.value) if buffer.value else b""
        finally:
            if buffer.value:
                self._free(buffer)
        return Credential(payload, uid.value, gid.value)
