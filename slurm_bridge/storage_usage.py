"""How much a drive's folder holds: ``du`` as root, the bytes allocated on disk (what a quota counts).

``du --summarize --one-file-system`` walks the folder once: it counts a hard-linked file
once, follows no symbolic link and stays on the folder's file system, so a mount inside
a project folder is not charged to it. Walking costs time in proportion to the number of
files, which is why it runs every few minutes (the anchor's storage cycle is 5 min), one
folder at a time, off the usage cycle. A folder that is gone measures 0.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# A walk of a very large folder may take long; one that takes longer is given up (and tried next time).
DU_TIMEOUT_SECONDS: Final = 900.0


class StorageMeasureError(Exception):
    """``du`` gave no total for the folder; the message says why."""


async def allocated_bytes(path: Path) -> int:
    """The bytes the files below ``path`` take on disk."""
    if not await asyncio.to_thread(path.is_dir):
        return 0
    process = await asyncio.create_subprocess_exec(
        "du", "--summarize", "--one-file-system", "--block-size=1", "--", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(DU_TIMEOUT_SECONDS):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise StorageMeasureError(f"du {path} took longer than {DU_TIMEOUT_SECONDS:.0f} s") from None
    # du still prints the total when it could not read some entries (exit 1): what it could count counts.
    first = out.decode(errors="replace").split("\t", 1)[0].strip()
    if not first.isdigit():
        raise StorageMeasureError(f"du {path} exited {process.returncode}: {err.decode(errors='replace')[:300]}")
    if process.returncode:
        log.warning("du %s: %s", path, err.decode(errors="replace")[:300])
    return int(first)
