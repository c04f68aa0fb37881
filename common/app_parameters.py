"""A job's parameter values, checked against its application's parameters (PROTOCOL-APPS §4).

:func:`bind` turns Core's ``specification.parameters`` into what a script is made of: per parameter the
Jinja context value (a string, number, bool, local path, list of modules) and the *argument text* (the
legacy invocation's and the app ``sbatch:`` map's word: a boolean's ``trueValue``, an option's value).

Where ucim differs from the anchor (``im2/pkg/controller/job_parameters.go``), on purpose:

* a value of the wrong type is **refused** (the anchor drops it silently): Core checks types itself, so a
  mismatch is a broken caller, and a silently dropped value runs a job the user did not ask for;
* a required parameter (not optional, no default) without a value is refused (the anchor leaves it out);
* text with a NUL character (no program argument can hold one), over 64 KiB, numbers that are not finite
  or out of the declared ``min``/``max``, and an enumeration value that is none of its options are refused;
* ``workflow`` values are refused: the Slurm flavour of ucim does not run workflows.

As the anchor: defaults of boolean/integer/floating_point/text/textarea/enumeration parameters (a bare
value or ``{"value": …}``) fill in what the job leaves out; names the application does not declare are
dropped (Core adds ``ucMetricSampleRate`` to every job) except ``_injected_*`` ones (provider-made
parameters such as ``_injected_modules``), which are kept for templates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ucim.common.resources import AppParameter, JobApplication, ParameterValue
from ucim.common.shell_words import InvalidJobError, argument_text

log = logging.getLogger(__name__)

# Text values above this many bytes are refused; Linux limits one program argument to 128 KiB.
MAX_TEXT_BYTES: Final = 65_536
# Integers are int64 at Core; floats are held to the same size.
_NUMBER_LIMIT: Final = 2**63
INJECTED_PREFIX: Final = "_injected_"

# The value type each parameter type takes (im2 JobVerifyParameterType).
VALUE_TYPES: Final[Mapping[str, str]] = {
    "input_file": "file",
    "input_directory": "file",
    "text": "text",
    "textarea": "text",
    "enumeration": "text",
    "integer": "integer",
    "floating_point": "floating_point",
    "boolean": "boolean",
    "peer": "peer",
    "license_server": "license_server",
    "network_ip": "network",
    "ingress": "ingress",
    "private_network": "private_network",
    "modules": "modules",
    "workflow": "workflow",
}
# Parameter types whose defaultValue the anchor reads (jobReadDefaultValue).
_DEFAULTED: Final = frozenset({"boolean", "integer", "floating_point", "text", "textarea", "enumeration"})
# Provider-made values kept without a declaration, by value type.
_INJECTED_TYPES: Final = frozenset({"text", "integer", "floating_point", "boolean", "modules"})

# The local path of a file value: (parameter name, value) -> path. The instance resolves and checks it as
# the user; the gateway, which cannot, passes a placeholder.
LocalPath = Callable[[str, ParameterValue], str]


@dataclass(frozen=True, slots=True)
class BoundValue:
    """One parameter's value, checked: what templates see and what an argument says."""

    parameter: AppParameter | None  # None for an undeclared ``_injected_*`` value
    value: ParameterValue
    context: Any  # the Jinja context value; None: not in the context (a workflow's)
    argument: str  # the argument text (§4, right column)


def bind(app: JobApplication, given: Mapping[str, ParameterValue], *, local_path: LocalPath) -> dict[str, BoundValue]:
    """Every parameter that has a value (given or default), checked; InvalidJobError names the first that is wrong."""
    bound: dict[str, BoundValue] = {}
    for parameter in app.parameters:
        if parameter.type == "readme":
            continue  # text for the user, never a value
        value = given.get(parameter.name)
        if value is None:
            value = default_value(parameter)
        if value is None:
            if not parameter.optional and parameter.default_value is None:
                raise InvalidJobError(f"parameter {_label(parameter)} is required")
            continue
        bound[parameter.name] = _bind_declared(parameter, value, local_path)
    declared = {parameter.name for parameter in app.parameters}
    dropped = []
    for name, value in given.items():
        if name in declared:
            continue
        if name.startswith(INJECTED_PREFIX) and value.type in _INJECTED_TYPES:
            bound[name] = _bind_injected(name, value)
        else:
            dropped.append(name)
    if dropped:
        # Core adds parameters of its own to every job (ucMetricSampleRate); the anchor drops them too.
        log.debug("undeclared parameters dropped", extra={"dropped": sorted(dropped)})
    return bound


def bind_parameters(
    app: JobApplication, given: Mapping[str, ParameterValue], *, local_path: LocalPath
) -> dict[str, Any]:
    """The Jinja context values of a job's parameters (name -> value); InvalidJobError says what is wrong."""
    bound = bind(app, given, local_path=local_path)
    return {name: value.context for name, value in bound.items() if value.context is not None}


def parameter_argument(parameter: AppParameter, value: ParameterValue, *, local_path: LocalPath) -> str:
    """The argument text of one value of ``parameter`` (§4, right column); InvalidJobError if it does not fit."""
    return _bind_declared(parameter, value, local_path).argument


def default_value(parameter: AppParameter) -> ParameterValue | None:
    """The parameter's default as a value, or None; a bare value or ``{"value": …}``, of the parameter's type."""
    raw = parameter.default_value
    if parameter.type not in _DEFAULTED or raw is None:
        return None
    if isinstance(raw, dict) and "value" in raw:
        raw = raw["value"]
    value_type = VALUE_TYPES[parameter.type]
    wanted = {"text": str, "boolean": bool, "integer": int, "floating_point": float}[value_type]
    fits = isinstance(raw, wanted) and not (wanted is not bool and isinstance(raw, bool))
    if value_type == "floating_point" and isinstance(raw, int) and not isinstance(raw, bool):
        fits = True
    if value_type == "integer" and isinstance(raw, float) and raw.is_integer():
        fits = True
    # A default of another type is the application's mistake, not the user's: ignored, as the anchor does.
    return ParameterValue(type=value_type, value=raw) if fits else None


def _label(parameter: AppParameter) -> str:
    return f"{parameter.name!r}" + (f" ({parameter.title})" if parameter.title else "")


def _bind_declared(parameter: AppParameter, value: ParameterValue, local_path: LocalPath) -> BoundValue:
    name, kind = parameter.name, parameter.type
    expected = VALUE_TYPES.get(kind)
    if expected is None:
        raise InvalidJobError(f"parameter {_label(parameter)} has type {kind!r}, which this provider does not know")
    if value.type != expected:
        raise InvalidJobError(f"parameter {_label(parameter)} takes a value of type {expected}, not {value.type}")
    if kind == "workflow":
        raise InvalidJobError(f"parameter {_label(parameter)}: workflows are not supported by this provider")
    context: Any
    if kind in ("text", "textarea", "enumeration"):
        context = _text(name, value.value)
        if kind == "enumeration":
            _check_option(parameter, context)
        argument = _option_value(parameter, context)
    elif kind == "integer":
        context = _integer(name, value.value, parameter)
        argument = str(context)
    elif kind == "floating_point":
        context = _float(name, value.value, parameter)
        argument = argument_text(context)
    elif kind == "boolean":
        context = _boolean(name, value.value)
        chosen = parameter.true_value if context else parameter.false_value
        argument = chosen or argument_text(context)
    elif kind in ("input_file", "input_directory"):
        _text(name, _required(name, value.path, "path"))
        context = argument = local_path(name, value)
    elif kind == "peer":
        context = argument = _text(name, _required(name, value.hostname, "hostname"))
    elif kind == "modules":
        context = _modules(name, value)
        argument = ""
    else:  # license_server, network_ip, ingress, private_network: the resource's id
        context = argument = _text(name, _required(name, value.id, "id"))
    return BoundValue(parameter=parameter, value=value, context=context, argument=argument)


def _bind_injected(name: str, value: ParameterValue) -> BoundValue:
    context: Any
    if value.type == "text":
        context = _text(name, value.value)
    elif value.type == "integer":
        context = _integer(name, value.value, None)
    elif value.type == "floating_point":
        context = _float(name, value.value, None)
    elif value.type == "boolean":
        context = _boolean(name, value.value)
    else:
        context = _modules(name, value)
    argument = "" if value.type == "modules" else argument_text(context)
    return BoundValue(parameter=None, value=value, context=context, argument=argument)


def _required(name: str, field: str | None, what: str) -> str:
    if not field:
        raise InvalidJobError(f"parameter {name!r} has no {what}")
    return field


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidJobError(f"parameter {name!r} must be text, not {_kind(value)}")
    if "\x00" in value:
        raise InvalidJobError(f"parameter {name!r} holds a NUL character, which no program argument can")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidJobError(f"parameter {name!r} is not valid Unicode text") from error
    if size > MAX_TEXT_BYTES:
        raise InvalidJobError(f"parameter {name!r} is {size} bytes long; at most {MAX_TEXT_BYTES} are allowed")
    return value


def _integer(name: str, value: object, parameter: AppParameter | None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(f"parameter {name!r} must be an integer, not {_kind(value)}")
    _check_range(name, value, parameter)
    return value


def _float(name: str, value: object, parameter: AppParameter | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJobError(f"parameter {name!r} must be a number, not {_kind(value)}")
    number = float(value)
    _check_range(name, number, parameter)
    return number


def _check_range(name: str, value: float, parameter: AppParameter | None) -> None:
    if not math.isfinite(value) or abs(value) >= _NUMBER_LIMIT:
        raise InvalidJobError(f"parameter {name!r} must be a finite number below {_NUMBER_LIMIT:.3g} in size")
    if parameter is not None and parameter.min is not None and value < parameter.min:
        raise InvalidJobError(f"parameter {name!r} must be at least {parameter.min:g}, not {value}")
    if parameter is not None and parameter.max is not None and value > parameter.max:
        raise InvalidJobError(f"parameter {name!r} must be at most {parameter.max:g}, not {value}")


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidJobError(f"parameter {name!r} must be true or false, not {_kind(value)}")
    return value


def _modules(name: str, value: ParameterValue) -> list[str]:
    return [_text(name, module) for module in value.modules or []]


def _check_option(parameter: AppParameter, text: str) -> None:
    options = parameter.options or []
    if options and not any(text in (option.value, option.name) for option in options):
        choices = ", ".join(repr(option.value) for option in options[:20])
        raise InvalidJobError(f"parameter {_label(parameter)} must be one of {choices}, not {text!r}")


def _option_value(parameter: AppParameter, text: str) -> str:
    """An enumeration's argument: the value of the option named ``text``, else ``text`` (the anchor's rule)."""
    for option in parameter.options or []:
        if option.name == text:
            return option.value
    return text


def _kind(value: object) -> str:
    names = {str: "text", bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return "nothing" if value is None else names.get(type(value), type(value).__name__)
