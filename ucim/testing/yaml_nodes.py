"""Reading a YAML document the way Go's ``gopkg.in/yaml.v3`` decodes it into typed fields (for the Core stand-in).

core2 decodes an application's YAML into Go structs, and what a value becomes depends on the field's type, not
on YAML 1.1's rules that PyYAML applies: a ``string`` field takes the scalar's text as written (``version: 1.10``
is ``"1.10"``, ``yes`` stays ``"yes"``), an ``int64`` field takes ``3.7`` as 3, a ``bool`` field takes ``yes``
and ``on``, ``null`` is the zero value, unknown keys are ignored and a repeated key is an error. So the document
is composed into nodes with no implicit typing, and each value is read by the type its field has in core2
(yaml.v3 ``decode.go`` ``scalar``, ``resolve.go``). The errors read as yaml.v3 words them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

import yaml

STR_TAG: Final = "tag:yaml.org,2002:str"
# The plain scalars yaml.v3 resolves by table (resolve.go resolveMapList).
_FIXED: Final[dict[str, tuple[str, Any]]] = {
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), ("!!null", None)),
    **dict.fromkeys(("true", "True", "TRUE"), ("!!bool", True)),
    **dict.fromkeys(("false", "False", "FALSE"), ("!!bool", False)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), ("!!float", math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), ("!!float", math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), ("!!float", -math.inf)),
}
# Only a typed bool field accepts these (yaml.v3's nod to YAML 1.1).
_BOOL_11: Final = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "off", "Off", "OFF"), False),
}
_GO_INT: Final = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|0[0-7]*|[1-9][0-9]*)")
_YAML_FLOAT: Final = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)

Decoder = Callable[[yaml.Node], Any]


class YamlDecodeError(Exception):
    """The document is not what the Go types accept; the message is yaml.v3's (without Core's prefix)."""


class _UntypedLoader(yaml.SafeLoader):
    """Composes nodes without YAML 1.1 implicit typing: a plain scalar stays ``!!str`` until a field reads it."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML's class-level table, emptied here


def compose(text: str) -> yaml.Node | None:
    """The first document's root node (yaml.v3's Unmarshal reads one), or None for an empty document."""
    try:
        return next(iter(yaml.compose_all(text, Loader=_UntypedLoader)), None)
    except yaml.YAMLError as error:
        raise YamlDecodeError(f"yaml: {_one_line(error)}") from None


def _one_line(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        return f"line {error.problem_mark.line + 1}: {error.problem}"
    return str(error).replace("\n", " ")


# --- scalars ------------------------------------------------------------------


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and resolve(node) == ("!!null", None)


def resolve(node: yaml.ScalarNode) -> tuple[str, Any]:
    """(short tag, value) as yaml.v3 resolves a scalar; quoted and block scalars are always strings."""
    text = node.value
    if node.style:  # quoted, literal or folded
        return "!!str", text
    if text in _FIXED:
        return _FIXED[text]
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain):
        return "!!int", _go_parse_int(plain)
    if _YAML_FLOAT.fullmatch(plain):
        return "!!float", float(plain)
    return "!!str", text


def _go_parse_int(text: str) -> int:
    """``strconv.ParseInt(text, 0, 64)`` of a text ``_GO_INT`` matched (a leading 0 means octal, as in Go)."""
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits[:2].lower() in ("0x", "0b", "0o"):
        return sign * int(digits, 0)
    return sign * int(digits, 8 if len(digits) > 1 and digits.startswith("0") else 10)


def type_error(node: yaml.Node, go_type: str) -> YamlDecodeError:
    """yaml.v3's ``cannot unmarshal`` error for a node that does not fit a Go type."""
    if isinstance(node, yaml.MappingNode):
        tag, shown = "!!map", ""
    elif isinstance(node, yaml.SequenceNode):
        tag, shown = "!!seq", ""
    else:
        tag = resolve(node)[0] if isinstance(node, yaml.ScalarNode) else "!!str"
        value = str(node.value)
        shown = f" `{value[:7]}...`" if len(value) > 10 else f" `{value}`"
    line = node.start_mark.line + 1
    return YamlDecodeError(f"yaml: unmarshal errors:\n  line {line}: cannot unmarshal {tag}{shown} into {go_type}")


def string(node: yaml.Node) -> str:
    """A Go ``string``: any scalar's text as written; null is ``""``."""
    if not isinstance(node, yaml.ScalarNode):
        raise type_error(node, "string")
    return "" if is_null(node) else str(node.value)


def int64(node: yaml.Node) -> int:
    """A Go ``int64``: an integer, or a float truncated towards zero (yaml.v3 allows it)."""
    if isinstance(node, yaml.ScalarNode):
        tag, value = resolve(node)
        if tag == "!!null":
            return 0
        if tag == "!!int" and _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
        if tag == "!!float" and math.isfinite(value) and _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
    raise type_error(node, "int64")


def float64(node: yaml.Node) -> float:
    if isinstance(node, yaml.ScalarNode):
        tag, value = resolve(node)
        if tag == "!!null":
            return 0.0
        if tag in ("!!int", "!!float"):
            return float(value)
    raise type_error(node, "float64")


def boolean(node: yaml.Node) -> bool:
    if isinstance(node, yaml.ScalarNode):
        tag, value = resolve(node)
        if tag == "!!null":
            return False
        if tag == "!!bool":
            return bool(value)
        if tag == "!!str" and node.value in _BOOL_11:
            return _BOOL_11[node.value]
    raise type_error(node, "bool")


def option(decode: Decoder) -> Decoder:
    """``util.Option[T]``: null is absent (None), anything else is read as T."""
    return lambda node: None if is_null(node) else decode(node)


# --- collections --------------------------------------------------------------


def pairs(node: yaml.MappingNode) -> Iterator[tuple[str, yaml.Node]]:
    """The mapping's (key text, value node), in document order; a repeated key is yaml.v3's error."""
    seen: dict[str, int] = {}
    for key, value in node.value:
        name = string(key)
        if name in seen:
            line = key.start_mark.line + 1
            raise YamlDecodeError(
                f'yaml: unmarshal errors:\n  line {line}: mapping key "{name}" already defined at line {seen[name]}'
            )
        seen[name] = key.start_mark.line + 1
        yield name, value


def mapping(decode: Decoder, go_type: str) -> Callable[[yaml.Node], dict[str, Any]]:
    """A Go ``map[string]T`` (null: empty), keys in document order."""

    def read(node: yaml.Node) -> dict[str, Any]:
        if is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise type_error(node, go_type)
        return {name: decode(value) for name, value in pairs(node)}

    return read


def sequence(decode: Decoder, go_type: str) -> Callable[[yaml.Node], list[Any] | None]:
    """A Go slice: None for null (Go's nil), a list otherwise (``[]`` is an empty, non-nil slice)."""

    def read(node: yaml.Node) -> list[Any] | None:
        if is_null(node):
            return None
        if not isinstance(node, yaml.SequenceNode):
            raise type_error(node, go_type)
        return [decode(item) for item in node.value]

    return read


def struct(fields: dict[str, Decoder], go_type: str) -> Callable[[yaml.Node], dict[str, Any]]:
    """A Go struct: the known keys read by their field's decoder, unknown keys ignored; null is the zero struct."""

    def read(node: yaml.Node) -> dict[str, Any]:
        if is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise type_error(node, go_type)
        return {name: fields[name](value) for name, value in pairs(node) if name in fields}

    return read
