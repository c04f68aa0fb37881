"""The words a job script is made of: a value as one bash word, as one sbatch directive word, and as text.

Three printers, each for one reader:

* :func:`bash_word` for bash. A value is always exactly one word whose content is the value, byte for
  byte: ``'…'`` with ``'`` written as ``'"'"'`` (the anchor's quoting, gonja ``utils/escape.go``), or, when
  the value holds a line break or another control character, an ANSI-C word ``$'…'`` with escapes. So
  every value stays on the line it is printed on: no value can start a line of ``job.sbatch``, let alone
  one that reads ``#SBATCH …`` (the anchor prints such values inside ``'…'`` across several lines).
* :func:`sbatch_word` for the ``#SBATCH`` lines, which sbatch splits itself (Slurm 22.05
  ``src/sbatch/opt.c`` ``get_argument``): quotes group, a backslash escapes the next character even
  inside quotes, an unquoted ``#`` ends the line. Values with a line break or control character are
  refused: a directive line must stay one line.
* :func:`template_text` (what gonja prints for a value, ``exec/value.go`` ``String()``) and
  :func:`argument_text` (Go's ``fmt.Sprint``, the anchor's argument builder): the text of a value before
  it is quoted.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Final

# A value as the anchor's templates see it.
Scalar = str | int | float | bool

# Characters that make a value print as $'…': C0 controls, DEL, C1 controls and the Unicode line and
# paragraph separators (an editor shows these as line breaks, bash does not, but they are escaped anyway).
_NEEDS_ANSI_C: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES: Final = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def _octal(char: str) -> str:
    # Three digits: bash reads at most three, so a digit that follows stays itself.
    return "".join(f"\\{byte:03o}" for byte in char.encode("utf-8"))


# How an ANSI-C word writes each character it escapes: the controls above, its quote and its escape.
_ANSI_C: Final = {
    code: _NAMED_ESCAPES.get(chr(code)) or _octal(chr(code))
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, ord("'"), ord("\\")]
}
# A directive value: no control character at all (a tab is allowed: sbatch splits on it like a space).
_DIRECTIVE_CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
# Words that need no quotes in bash or in an sbatch directive.
PLAIN_WORD: Final = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


class InvalidJobError(ValueError):
    """The request cannot become a job script; the message says why, for the user (HTTP 400)."""


class ShellText(str):
    """Text that is already safe to print into a script as it is: a helper's output, quoted or validated.

    Templates cannot make one: every operation on a ``str`` (``~``, ``|replace``, ``%``) returns a plain
    ``str``, and Jinja's ``|safe`` makes a ``Markup``, which is quoted like any other string.
    """

    __slots__ = ()


def bash_word(text: str) -> ShellText:
    """``text`` as one bash word; InvalidJobError for a NUL character, which no word (no argument) can hold."""
    text = str(text)  # a plain str: a Markup would escape the quotes added to it
    if "\x00" in text:
        raise InvalidJobError("a value holds a NUL character, which no shell word can")
    if not _NEEDS_ANSI_C.search(text):
        return ShellText("'" + text.replace("'", "'\"'\"'") + "'")
    return ShellText("$'" + text.translate(_ANSI_C) + "'")


def sbatch_word(text: str) -> str:
    """``text`` as one word of an ``#SBATCH`` line, quoted so that sbatch reads exactly ``text``.

    Single quotes as the anchor writes them (``'it'"'"'s'`` reads as ``it's`` in sbatch too), and a
    backslash doubled (sbatch treats it as an escape even inside quotes, bash would not).
    """
    text = str(text)
    if _DIRECTIVE_CONTROL.search(text):
        raise InvalidJobError(f"{text!r} cannot be a Slurm directive value: it holds a line break or control character")
    if not text:
        raise InvalidJobError("a Slurm directive value cannot be empty")
    return "'" + text.replace("\\", "\\\\").replace("'", "'\"'\"'") + "'"


def template_text(value: object) -> str:
    """What ``{{ value }}`` prints before quoting, as gonja prints it; InvalidJobError for lists, dicts, objects.

    Booleans print as ``True``/``False`` (gonja's ``Value.String()``, which is also Python's), floats in
    fixed notation with up to 11 decimals and at least one (``3.0``, ``0.00001``: gonja's), None as nothing.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)  # a plain str: a Markup would escape what is added to it
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _gonja_float(value)
    if isinstance(value, list | tuple):
        kind = "a list"
    elif isinstance(value, dict):
        kind = "a dictionary"
    else:
        kind = f"a {type(value).__name__}"
    raise InvalidJobError(f"a template printed {kind}, which has no text form in a script: print one of its items")


def _gonja_float(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.11f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def argument_text(value: object) -> str:
    """A value as the anchor's argument builder writes it (Go's ``fmt.Sprint``): ``true``, ``3``, ``1e+06``.

    Integers print as integers: the anchor decodes every JSON number as float64, so a user's integer
    1000000 became ``1e+06`` there.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    raise InvalidJobError(f"a {type(value).__name__} has no text form in a script")


def go_float(value: float) -> str:
    """Go's ``fmt.Sprint(float64)``: the shortest digits, in exponent form below 1e-4 and from 1e+06."""
    if not math.isfinite(value) or value == 0:
        return _GO_SPECIAL.get(str(value), str(value))
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    point = len(mantissa) + int(exponent)  # where the decimal point is, counted from the first digit
    magnitude = point - 1
    if magnitude < -4 or magnitude >= 6:
        fraction = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
        text = f"{mantissa[0]}{fraction}e{'-' if magnitude < 0 else '+'}{abs(magnitude):02d}"
    elif point <= 0:
        text = f"0.{'0' * -point}{mantissa}"
    elif point >= len(mantissa):
        text = mantissa + "0" * (point - len(mantissa))
    else:
        text = f"{mantissa[:point]}.{mantissa[point:]}"
    return ("-" if sign else "") + text


_GO_SPECIAL: Final = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf", "0.0": "0", "-0.0": "-0"}
