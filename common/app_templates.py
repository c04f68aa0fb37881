"""Core's application templates in a sandboxed Jinja2 with the anchor's semantics (PROTOCOL-APPS §5).

Pure, no I/O: the gateway runs :func:`check_application` when a job is created (a template that cannot
compile is a 400 there, never a broken script in Slurm); the user's instance renders at submit
(``ucim.user_sidecar.sbatch``).

The environment is gonja's, as far as templates can tell (IM2 ``controller/jinja_invocation.go``):

* **Bash autoescape.** Every string ``{{ }}`` prints becomes exactly one bash word (``'…'``, or ``$'…'``
  for a value with a line break: ``ucim.common.shell_words``); numbers and booleans print bare
  (``3``, ``2.5``, ``True``: gonja prints booleans as Python does); :class:`ShellText` from the helpers
  (``srun()``, ``|option``, macros) prints as it is. This is a ``finalize`` hook, not Jinja's (HTML)
  autoescape: Jinja's ``|safe`` makes a ``Markup``, which is still quoted, so a template has no way to
  print a value unquoted. A list, dict or object printed is a readable error; None and undefined print
  nothing.
* Undefined names render empty (not strict); ``trim_blocks`` is off and the trailing newline is kept.
* The filters ``flag`` and ``option`` and the tests ``match`` and ``search``, as the anchor defines them;
  Jinja's builtins otherwise; the globals are the anchor's (``range``, ``dict``, ``lipsum``, ``cycler``,
  ``joiner``, ``namespace``) plus ``ternary``; the rest of the context (``srun``, ``sbatch``,
  ``dynamicInterface``, ``ucloud``, the parameters) comes with each render.

The sandbox (``ImmutableSandboxedEnvironment``: no ``_``-attributes, no mutation of lists and dicts) is
hardened for what a template's *values* can make it do: a template that names an ``_``-attribute or
includes another template is refused at compile time; ``*``, ``**``, ``%`` and ``+`` are intercepted
(also keeping them out of compile-time constant folding, which would run at the gateway), as are string
methods and filters that take a size (``center``, ``indent``, ``replace``, ``join``, ``format``, …), so no
result grows past :data:`MAX_OUTPUT_CHARACTERS`; ``range`` is capped and counted; a render stops at
:data:`MAX_OUTPUT_CHARACTERS` of output, :data:`MAX_STEPS` steps or :data:`RENDER_SECONDS`. A template is
a program the application's author wrote and runs as the user anyway; these limits keep one job's values
from making the user's own instance (or the gateway) allocate gigabytes.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import time
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal

from jinja2 import Template, TemplateError, TemplateSyntaxError, Undefined, nodes, pass_context, pass_eval_context
from jinja2.filters import FILTERS
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.utils import Cycler, Joiner, Namespace, generate_lorem_ipsum

from ucim.common.app_parameters import (
    INJECTED_PREFIX,
    MAX_TEXT_BYTES,
    BoundValue,
    LocalPath,
    bind,
    bind_parameters,
    parameter_argument,
)
from ucim.common.resources import InvocationPart, JobApplication, ParameterValue
from ucim.common.shell_words import PLAIN_WORD, InvalidJobError, ShellText, bash_word, sbatch_word, template_text

__all__ = [
    "INJECTED_PREFIX",
    "MAX_TEXT_BYTES",
    "PREPROCESSOR_FUNCTIONS",
    "SBATCH_OPTIONS",
    "BoundValue",
    "InvalidJobError",
    "ShellText",
    "argument_template",
    "bind",
    "bind_parameters",
    "check_application",
    "check_directive_value",
    "check_environment_name",
    "check_part",
    "check_sbatch_option",
    "compile_template",
    "is_jinja_invocation",
    "jinja_source",
    "parameter_argument",
    "preprocess",
    "render",
]

MAX_OUTPUT_CHARACTERS: Final = 1_048_576
MAX_STEPS: Final = 1_000_000
RENDER_SECONDS: Final = 2.0
# The widest a size argument (center(n), indent(n), zfill(n), …) may be.
MAX_WIDTH: Final = 10_000
# Bits of the largest integer ``**`` and ``*`` may make.
_MAX_INTEGER_BITS: Final = 4096
_ENVIRONMENT_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# printf-style and str.format widths/precisions of five digits or more, or taken from an argument (*, {}).
_HUGE_PERCENT: Final = re.compile(r"%[-#0 +]*(?:\*|\d{5,})|%[-#0 +]*\d*\.(?:\*|\d{5,})")
_HUGE_BRACES: Final = re.compile(r"\{[^{}]*:[^{}]*(?:\d{5,}|\{)")


# --- the sbatch options an application may set ----------------------------------------------------
# What each takes (Slurm 22.05 src/common/slurm_opt.c): a value, no value, or an optional one
# (written --key=value). Exact names only: sbatch accepts any unambiguous prefix of an option
# (--acc is --account), which is how the anchor's deny list can be walked around.
OptionKind = Literal["value", "flag", "optional"]
SBATCH_OPTIONS: Final[Mapping[str, OptionKind]] = {
    **dict.fromkeys(
        [
            "acctg-freq", "begin", "chdir", "constraint", "core-spec", "cores-per-socket", "cpu-freq",
            "cpus-per-gpu", "cpus-per-task", "deadline", "distribution", "error", "exclude", "gpu-bind",
            "gpu-freq", "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags",
            "hint", "input", "licenses", "mail-type", "mail-user", "mem", "mem-bind", "mem-per-cpu",
            "mem-per-gpu", "mincpus", "network", "nodelist", "nodes", "ntasks", "ntasks-per-core",
            "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "open-mode", "output", "prefer",
            "profile", "qos", "reservation", "signal", "sockets-per-node", "switches", "thread-spec",
            "threads-per-core", "time", "time-min", "tmp",
        ],
        "value",
    ),
    **dict.fromkeys(
        ["contiguous", "no-requeue", "overcommit", "oversubscribe", "requeue", "spread-job", "use-min-nodes"], "flag"
    ),
    **dict.fromkeys(["exclusive", "nice", "propagate"], "optional"),
}  # fmt: skip
# Set by ucim alone. account, partition, parsable, comment: the anchor's; job-name: ucim finds a job in
# Slurm by it (the UCloudJob's identity, what makes submission idempotent).
FIXED_DIRECTIVES: Final = frozenset({"account", "partition", "parsable", "comment", "job-name"})
_OPTION_NAME: Final = re.compile(r"^[a-z][a-z0-9-]*$")


def check_sbatch_option(key: str) -> OptionKind:
    """What option ``key`` takes; InvalidJobError if an application may not set it."""
    if key in FIXED_DIRECTIVES:
        raise InvalidJobError(f"the Slurm option --{key} is set by the provider; an application cannot change it")
    if not _OPTION_NAME.match(key):
        raise InvalidJobError(f"{key!r} is not a Slurm option name (lower-case letters, digits and '-')")
    kind = SBATCH_OPTIONS.get(key)
    if kind is None:
        raise InvalidJobError(f"the Slurm option --{key} cannot be set by an application here; allowed: "
                              + ", ".join(sorted(SBATCH_OPTIONS)))  # fmt: skip
    return kind


def check_directive_value(key: str, kind: OptionKind, text: str) -> str:
    """``text`` (trimmed, as the anchor does) as what follows ``--key`` in its ``#SBATCH`` line."""
    text = text.strip()
    if kind == "flag":
        if text:
            raise InvalidJobError(f"the Slurm option --{key} takes no value, not {text!r}")
        return ""
    if kind == "optional":
        return f"={sbatch_word(text)}" if text else ""
    if not text:
        raise InvalidJobError(f"the Slurm option --{key} needs a value")
    return " " + sbatch_word(text)


def check_environment_name(name: str) -> str:
    if not _ENVIRONMENT_NAME.match(name):
        raise InvalidJobError(f"{name!r} is not an environment variable name (letters, digits and '_')")
    return name


# --- the render budget --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    deadline: float
    steps: int = 0

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise InvalidJobError(f"the template does more than {MAX_STEPS} steps")
        if self.steps % 1024 < count and time.monotonic() > self.deadline:
            raise InvalidJobError(f"the template takes longer than {RENDER_SECONDS:g} s to render")


# The budget of the render in progress; None outside a render (compile-time evaluation has none).
_BUDGET: ContextVar[_Budget | None] = ContextVar("ucim_render_budget", default=None)


def _step(count: int = 1) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step(count)


def _check_size(value: object) -> None:
    if isinstance(value, str | list | tuple) and len(value) > MAX_OUTPUT_CHARACTERS:
        raise InvalidJobError(f"a template value grows past {MAX_OUTPUT_CHARACTERS} characters")


def _check_width(width: object) -> None:
    if isinstance(width, int) and width > MAX_WIDTH:
        raise InvalidJobError(f"a width of {width} is more than a template may ask for ({MAX_WIDTH})")


def _check_format(text: str) -> None:
    if _HUGE_PERCENT.search(text) or _HUGE_BRACES.search(text):
        raise InvalidJobError("a template format asks for a width or precision that is too large")


def _check_replace(text: str, old: str, new: str) -> None:
    grows = (len(text) + 1 if old == "" else text.count(old)) * max(0, len(new) - len(old))
    _check_size_estimate(len(text) + grows)


def _check_join(separator: str, items: list[Any]) -> None:
    _check_size_estimate(sum(len(str(item)) for item in items) + len(separator) * max(0, len(items) - 1))


def _check_size_estimate(size: int) -> None:
    if size > MAX_OUTPUT_CHARACTERS:
        raise InvalidJobError(f"a template value would grow past {MAX_OUTPUT_CHARACTERS} characters")


# --- the environment ------------------------------------------------------------------------------------


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_repeat(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        result = self.binop_table[operator](left, right)
        _check_size(result)
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        for argument in itertools.chain(args, kwargs.values()):
            _check_size(argument)
        if isinstance(obj, types.BuiltinMethodType) and isinstance(obj.__self__, str):
            args = _check_string_method(obj.__name__, obj.__self__, args)
        result = super().call(context, obj, *args, **kwargs)
        # A macro's output is already quoted where it printed values (gonja marks it safe too).
        return ShellText(result) if isinstance(obj, Macro) and isinstance(result, str) else result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped


def _check_power(base: object, exponent: object) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0):
        return
    if exponent * math.log2(abs(base)) > _MAX_INTEGER_BITS:
        raise InvalidJobError(f"{base} ** {exponent} is larger than a template may compute")


def _check_repeat(left: object, right: object) -> None:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            _check_size_estimate(len(sequence) * count)
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_INTEGER_BITS:
        raise InvalidJobError("a product larger than a template may compute")


def _check_string_method(name: str, text: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments of a ``str`` method call, checked for the size of what it would make."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _check_width(args[0])
    elif name == "expandtabs" and args and isinstance(args[0], int):
        _check_size_estimate(len(text) * args[0])
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(text, args[0], args[1])
    elif name == "join" and args:
        items = list(args[0])  # an iterator would be used up by the check
        _check_join(text, items)
        return (items, *args[1:])
    return args


class _CountedRange:
    """``range`` whose iterations count against the render's steps (Jinja's sandbox caps one at 100,000)."""

    __slots__ = ("_range",)

    def __init__(self, *args: int) -> None:
        self._range = safe_range(*args)

    def __iter__(self) -> Iterator[int]:
        for number in self._range:
            _step()
            yield number

    def __reversed__(self) -> Iterator[int]:
        for number in reversed(self._range):
            _step()
            yield number

    def __len__(self) -> int:
        return len(self._range)

    def __contains__(self, number: object) -> bool:
        return number in self._range

    def __getitem__(self, index: int) -> int:
        return self._range[index]

    def __repr__(self) -> str:
        return repr(self._range)


class _Namespace(Namespace):
    """``namespace()`` whose attributes cannot grow past the output limit (``ns.s = ns.s ~ ns.s`` in a loop)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(value)
        super().__setitem__(name, value)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # Jinja's names
    if n > 100 or max > 1000:
        raise InvalidJobError("lipsum() is limited to 100 paragraphs of 1,000 words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _ternary(condition: Any, if_true: Any, if_false: Any) -> Any:
    return if_true if condition else if_false


# --- filters and tests ----------------------------------------------------------------------------


def _flag(value: Any, on: Any, off: Any = "") -> str:
    """``x | flag("--on"[, "--off"])``: the flag for a true value (only ``true`` itself, as gonja's ``Bool()``).

    The flag is a plain string, so it prints quoted (``'--on'``); no flag prints nothing.
    """
    if not isinstance(on, str) or not isinstance(off, str):
        raise InvalidJobError('flag() takes one or two texts: x | flag("--on"[, "--off"])')
    chosen = on if value is True else off
    return ShellText("") if chosen == "" else chosen


def _option(value: Any, option: Any, spaced: Any = None) -> ShellText:
    """``x | option("--opt")`` → ``--opt '<x>'``; ``option("--opt=")`` (or a 2nd arg false) → ``'--opt=<x>'``.

    The option is printed bare only when it is a plain word; the anchor prints it unquoted whatever it is.
    """
    name = template_text(option)
    if spaced is None:
        spaced = not name.endswith("=")
    elif not isinstance(spaced, bool):
        raise InvalidJobError("option()'s second argument must be true or false")
    if value is None or isinstance(value, Undefined):
        return ShellText("")
    text = template_text(value)
    if not spaced:
        return bash_word(name + text)
    word = name if name == "" or PLAIN_WORD.match(name) else bash_word(name)
    return ShellText(f"{word} {bash_word(text)}")


def _regex_test(anchored: bool) -> Callable[..., bool]:
    # pass_context keeps Jinja from running the test at compile time (constant folding), at the gateway.
    @pass_context
    def test(_: Context, value: Any, pattern: Any, ignorecase: Any = False, multiline: Any = False) -> bool:
        if not isinstance(value, str):
            raise InvalidJobError("match and search test text only")
        if not isinstance(ignorecase, bool) or not isinstance(multiline, bool):
            raise InvalidJobError("ignorecase and multiline must be true or false")
        flags = (re.IGNORECASE if ignorecase else 0) | (re.MULTILINE if multiline else 0)
        source = f"^{template_text(pattern)}$" if anchored else template_text(pattern)
        try:
            return re.search(source, value, flags) is not None
        except re.error as error:
            raise InvalidJobError(f"could not compile the regular expression {pattern!r}: {error}") from error

    return test


def _capped_filters() -> dict[str, Callable[..., Any]]:
    """Jinja's filters that take a size, with the size checked first."""
    center, indent, replace, join, slice_, format_ = (
        FILTERS[name] for name in ("center", "indent", "replace", "join", "slice", "format")
    )

    def capped_center(value: str, width: int = 80) -> str:
        _check_width(width)
        return str(center(value, width))

    def capped_indent(text: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        size = len(width) if isinstance(width, str) else width
        _check_width(size)
        _check_size_estimate(len(str(text)) + (str(text).count("\n") + 1) * size)
        return str(indent(text, width, first, blank))

    @pass_eval_context
    def capped_replace(context: Any, text: str, old: str, new: str, count: int | None = None) -> str:
        _check_replace(str(text), str(old), str(new))
        return str(replace(context, text, old, new, count))

    @pass_eval_context
    def capped_join(context: Any, value: Any, separator: str = "", attribute: Any = None) -> str:
        items = list(value)
        _check_join(str(separator), items)
        return str(join(context, items, separator, attribute))

    def capped_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
        _check_width(slices)
        return slice_(value, slices, fill_with)

    def capped_format(value: str, *args: Any, **kwargs: Any) -> str:
        _check_format(str(value))
        return str(format_(value, *args, **kwargs))

    return {
        "center": capped_center,
        "indent": capped_indent,
        "replace": capped_replace,
        "join": capped_join,
        "slice": capped_slice,
        "format": capped_format,
    }


# --- printing -----------------------------------------------------------------------------------------


def _print_quoted(value: Any) -> ShellText:
    """``finalize`` of the bash-escaping environment: every string one word, numbers and booleans bare."""
    if isinstance(value, ShellText):
        return value
    if value is None or isinstance(value, Undefined):
        return ShellText("")
    text = template_text(value)
    return bash_word(text) if isinstance(value, str) else ShellText(text)


def _print_raw(value: Any) -> str:
    """``finalize`` of the unescaped environment (jinja environment values, argument words): the text.

    Its output is always quoted as one word afterwards, as a whole.
    """
    if value is None or isinstance(value, Undefined):
        return ""
    return template_text(value)


def _environment(finalize: Callable[[Any], str]) -> _Sandbox:
    env = _Sandbox(
        autoescape=False,
        finalize=finalize,
        undefined=Undefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
        auto_reload=False,
    )
    env.globals.clear()
    env.globals.update(
        range=_CountedRange,
        dict=dict,
        lipsum=_lipsum,
        cycler=Cycler,
        joiner=Joiner,
        namespace=_Namespace,
        ternary=_ternary,
    )
    env.filters.update(_capped_filters(), flag=_flag, option=_option)
    env.tests.update(match=_regex_test(anchored=True), search=_regex_test(anchored=False))
    return env


_QUOTED: Final = _environment(_print_quoted)
_RAW: Final = _environment(_print_raw)


# --- compiling and rendering ------------------------------------------------------------------------------


def _check_tree(tree: nodes.Template) -> None:
    """What cannot work, refused at compile time: Python's internals (``__class__``, a name-mangled
    ``_TemplateReference__context``) and other templates (there are none to load).

    Other ``_``-attributes are left to the sandbox at render: ``d._key`` and ``d['_key']`` look a dict up.
    """
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Extends, nodes.Include, nodes.Import,
                               nodes.FromImport)):  # fmt: skip
        if isinstance(node, nodes.Extends | nodes.Include | nodes.Import | nodes.FromImport):
            raise TemplateSyntaxError("a template cannot extend, include or import other templates", node.lineno)
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(getattr(node, "arg", None), "value", None)
        if isinstance(name, str) and "__" in name:
            raise TemplateSyntaxError(f"{name!r}: the sandbox forbids Python's internal names", node.lineno)


@functools.lru_cache(maxsize=128)
def _compiled(source: str, quoted: bool) -> Template:
    env = _QUOTED if quoted else _RAW
    tree = env.parse(source)
    _check_tree(tree)
    return env.from_string(tree)


def compile_template(source: str, *, quoted: bool = True, where: str = "the template") -> Template:
    """``source`` compiled (cached by its text); InvalidJobError with the line and Jinja's words.

    ``quoted``: every string printed becomes one bash word (the invocation); else printed as it is (the
    ``jinja`` values of environment variables, arguments and ``sbatch:`` entries, quoted as a whole later).
    """
    try:
        return _compiled(source, quoted)
    except TemplateSyntaxError as error:
        raise InvalidJobError(f"{where}, line {error.lineno}: {error.message}") from error
    except TemplateError as error:
        raise InvalidJobError(f"{where}: {error}") from error


def render(template: Template, context: Mapping[str, Any], *, where: str = "the template") -> str:
    """``template`` rendered within the limits; InvalidJobError (with the line) for anything that goes wrong."""
    budget = _Budget(deadline=time.monotonic() + RENDER_SECONDS)
    token = _BUDGET.set(budget)
    try:
        return _collect(template.generate(context), budget)
    except _TEMPLATE_MISTAKES as error:
        raise InvalidJobError(f"{_where(where, error)}: {error}") from error
    finally:
        _BUDGET.reset(token)


# What Jinja and the Python it runs raise for a template's mistakes (InvalidJobError is a ValueError).
_TEMPLATE_MISTAKES: Final = (
    TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError, RecursionError
)  # fmt: skip


def _collect(chunks: Iterator[str], budget: _Budget) -> str:
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT_CHARACTERS:
            raise InvalidJobError(f"the output is longer than {MAX_OUTPUT_CHARACTERS} characters")
        budget.step()
        parts.append(chunk)
    return "".join(parts)


def _where(where: str, error: BaseException) -> str:
    """``where``, with the template line the error came from (Jinja rewrites tracebacks to template lines)."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == "<template>"]
    return f"{where}, line {lines[-1]}" if lines else where


# --- preprocessing ------------------------------------------------------------------------------------

# IM2 jinja_invocation.go: {- name -} or {- name("a", "b") -}; the spaces are required, arguments are
# double-quoted strings.
_CALL: Final = re.compile(r"\{- ([^-{}()]*)(\(([^)]*)\))? -\}")
_ARGUMENT: Final = re.compile(r'"([^"]*)"')
PREPROCESSOR_FUNCTIONS: Final = frozenset(
    {"applicationLoad", "applicationUnload", "loadApplication", "unloadApplication", "systemLoad",
     "systemUnload", "versionResolver"}
)  # fmt: skip

Expand = Callable[[str, list[str]], str]


def preprocess(template: str, expand: Expand) -> str:
    """``template`` with every ``{- name -}``/``{- name("a","b") -}`` replaced by ``expand(name, args)``."""
    return _CALL.sub(lambda match: expand(match.group(1), _ARGUMENT.findall(match.group(2) or "")), template)


def is_jinja_invocation(app: JobApplication) -> bool:
    """Jinja mode: the invocation is exactly one ``jinja`` part (what v2 applications have)."""
    return len(app.invocation) == 1 and app.invocation[0].type == "jinja"


def jinja_source(app: JobApplication) -> str:
    """The template of a Jinja-mode application (workflow job texts are not appended: workflows are refused)."""
    return app.invocation[0].template or ""


# --- the gateway's check ----------------------------------------------------------------------------------


def _placeholder(name: str, value: ParameterValue) -> str:
    return value.path or ""


_placeholder_path: LocalPath = _placeholder


def _placeholder_expand(name: str, args: list[str]) -> str:
    # The load snippets are the site's (the instance has them); known functions expand to nothing here.
    return "" if name in PREPROCESSOR_FUNCTIONS else f"\n# unknown function {name}\n"


def _ignore_functions(name: str, args: list[str]) -> str:
    return ""  # the anchor's preprocessing of argument and environment templates: nothing


def check_application(app: JobApplication, given: Mapping[str, ParameterValue]) -> None:
    """What job creation checks: the parameters bind, the templates compile, the names are usable.

    InvalidJobError says what is wrong. Fast when warm: compiled templates are cached by their text.
    """
    bind(app, given, local_path=_placeholder_path)
    if is_jinja_invocation(app):
        compile_template(preprocess(jinja_source(app), _placeholder_expand), where="the invocation")
    else:
        for index, part in enumerate(app.invocation):
            check_part(part, f"invocation part {index + 1}")
    for name, part in (app.environment or {}).items():
        check_part(part, f"environment variable {check_environment_name(name)}")
    for key, part in (app.sbatch or {}).items():
        kind = check_sbatch_option(key)
        check_part(part, f"sbatch option --{key}")
        if part.type == "word":
            check_directive_value(key, kind, part.word or "")


def check_part(part: InvocationPart, where: str) -> None:
    """One invocation part's own checks: a template compiles, an ``env`` names a variable."""
    if part.type == "jinja":
        compile_template(preprocess(part.template or "", _ignore_functions), quoted=False, where=where)
    elif part.type == "env":
        check_environment_name(part.variable or "")


def argument_template(part: InvocationPart, where: str) -> Template:
    """The compiled template of a ``jinja`` argument or environment part (printed as it is, quoted as a whole)."""
    return compile_template(preprocess(part.template or "", _ignore_functions), quoted=False, where=where)
