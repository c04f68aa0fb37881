"""Core's application templates: the anchor's Jinja semantics, bash autoescape, the sandbox, parameter binding."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from markupsafe import Markup

from ucim.common.app_templates import (
    MAX_OUTPUT_CHARACTERS,
    InvalidJobError,
    ShellText,
    bind,
    bind_parameters,
    check_application,
    check_sbatch_option,
    compile_template,
    parameter_argument,
    preprocess,
    render,
)
from ucim.common.resources import AppParameter, JobApplication, ParameterValue
from ucim.common.shell_words import argument_text, bash_word, go_float, sbatch_word, template_text

# Values that must arrive as they are, as one word: shell syntax, line breaks, #SBATCH lines, Jinja syntax.
HOSTILE = [
    '\'; touch ./pwned; echo "$(id)" `id`',
    "$(touch ./pwned)",
    "`touch ./pwned`",
    "a; touch ./pwned",
    "a && b || c | d > ./pwned < /etc/passwd &",
    "line one\nline two\n#SBATCH --uid=0\n",
    "\n#SBATCH --account=evil",
    "#SBATCH --partition=evil",
    "\r\n$HOME ${HOME} $((1+1)) !! ~root *",
    "'\"'\"'",
    "'",
    "\\'\\",
    "\\",
    "$'\\n'",
    "-x",
    "--help",
    "",
    "  spaced  ",
    "tab\there",
    "ümlaut ✓ 🎉",
    "\x1b[31mred\x1b[0m \x7f \x01",
    "a\u2028b\u0085c",
    "{{ 7*7 }}",
    "{% for i in range(3) %}x{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self._TemplateReference__context }}",
    "{{ lipsum.__globals__['os'].popen('touch ./pwned').read() }}",
    "{{ cycler.__init__.__globals__ }}",
    "}}{{ x }}{%",
    "{- systemLoad -}",
]


def printed(source: str, **context: Any) -> str:
    return render(compile_template(source), context)


def bash_arguments(words: str) -> list[bytes]:
    """What bash passes to a command given ``words``: printf '%s\\0' each argument."""
    result = subprocess.run(["bash", "-c", f"printf '%s\\0' {words}"], capture_output=True, check=True)
    return result.stdout.split(b"\0")[:-1]


# --- words -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_a_bash_word_is_exactly_one_argument_holding_the_text(text: str) -> None:
    word = bash_word(text)
    assert "\n" not in word and "\r" not in word, "every value stays on its line"
    assert bash_arguments(word) == [text.encode()]


def test_a_plain_value_is_single_quoted_as_the_anchor_does() -> None:
    assert bash_word("it's") == "'it'\"'\"'s'"
    assert bash_word("") == "''"
    assert bash_word("a\nb") == "$'a\\nb'"


def test_a_nul_character_cannot_be_a_word() -> None:
    with pytest.raises(InvalidJobError, match="NUL"):
        bash_word("a\0b")


def test_a_directive_word_is_read_back_by_sbatch_rules() -> None:
    assert sbatch_word("it's") == "'it'\"'\"'s'"
    assert sbatch_word("a\\b #c") == "'a\\\\b #c'"
    for bad in ("a\nb", "a\rb", "", "\x1b"):
        with pytest.raises(InvalidJobError):
            sbatch_word(bad)


@pytest.mark.parametrize(
    ("value", "gonja", "go"),
    [
        (True, "True", "true"),
        (False, "False", "false"),
        (3, "3", "3"),
        (3.0, "3.0", "3"),
        (2.5, "2.5", "2.5"),
        (1e-5, "0.00001", "1e-05"),
        (1e6, "1000000.0", "1e+06"),
        (123456.0, "123456.0", "123456"),
        (1234567.5, "1234567.5", "1.2345675e+06"),
        (-0.25, "-0.25", "-0.25"),
        (None, "", ""),
        ("x", "x", "x"),
    ],
)
def test_values_print_as_gonja_and_go_print_them(value: object, gonja: str, go: str) -> None:
    assert template_text(value) == gonja
    assert argument_text(value) == go


def test_go_floats_special_values() -> None:
    assert [go_float(x) for x in (float("nan"), float("inf"), float("-inf"), 0.0, -0.0)] == [
        "NaN", "+Inf", "-Inf", "0", "-0"
    ]  # fmt: skip


# --- printing ----------------------------------------------------------------------------------------------


def test_strings_are_quoted_numbers_and_booleans_bare() -> None:
    out = printed("{{ s }} {{ n }} {{ f }} {{ b }} {{ no }}", s="a b", n=3, f=2.5, b=True, no=False)
    assert out == "'a b' 3 2.5 True False"


def test_undefined_and_none_print_nothing() -> None:
    assert printed("[{{ missing }}][{{ nothing }}]", nothing=None) == "[][]"


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, (1,)])
def test_a_list_or_dict_printed_is_a_readable_error(value: object) -> None:
    with pytest.raises(InvalidJobError, match="line 2: a template printed a"):
        printed("\n{{ value }}", value=value)


def test_safe_and_markup_are_still_quoted() -> None:
    assert printed("{{ x | safe }} {{ m }}", x="$(id)", m=Markup("$(id)")) == "'$(id)' '$(id)'"


def test_shell_text_from_helpers_prints_as_it_is_but_templates_cannot_make_it() -> None:
    helper = ShellText("srun -n 2 ")
    out = printed("{{ h }}|{{ h ~ '' }}|{{ h | replace('n', 'n') }}|{{ h.strip() }}", h=helper)
    assert out == "srun -n 2 |'srun -n 2 '|'srun -n 2 '|'srun -n 2'"


def test_a_macro_output_is_safe_as_in_gonja() -> None:
    source = "{% macro opt(v) %}--in {{ v }}{% endmacro %}{{ opt(x) }}"
    assert printed(source, x="a b") == "--in 'a b'"


def test_the_trailing_newline_and_tag_lines_stay() -> None:
    assert printed("a\n{% if true %}\nb\n{% endif %}\n") == "a\n\nb\n\n"


# --- filters and tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ yes | flag('--verbose') }}", "'--verbose'"),
        ("{{ no | flag('--verbose') }}", ""),
        ("{{ missing | flag('--verbose') }}", ""),
        ("{{ no | flag('--on', '--off') }}", "'--off'"),
        ("{{ 1 | flag('--on') }}", ""),  # only true itself, as gonja's Bool()
        ("{{ x | option('--input') }}", "--input 'a b'"),
        ("{{ x | option('--input=') }}", "'--input=a b'"),
        ("{{ x | option('--input', false) }}", "'--inputa b'"),
        ("{{ x | option('--input=', true) }}", "--input= 'a b'"),
        ("{{ n | option('-n') }}", "-n '3'"),
        ("{{ missing | option('--input') }}", ""),
        ("{{ x | option(evil) }}", "'--a b; touch ./pwned' 'a b'"),
        ("{{ x is match('a.b') }} {{ x is match('a') }} {{ x is search('a') }}", "True False True"),
        ("{{ x is match('A B', ignorecase=true) }} {{ x is search('B') }}", "True False"),
        ("{{ lines is search('^b$', multiline=true) }} {{ lines is search('^b$') }}", "True False"),
        ("{{ ternary(yes, 'a', 1) }} {{ ternary(no, 'a', 1) }}", "'a' 1"),
    ],
)
def test_filters_tests_and_ternary(source: str, expected: str) -> None:
    context = {"yes": True, "no": False, "x": "a b", "n": 3, "evil": "--a b; touch ./pwned", "lines": "a\nb"}
    assert printed(source, **context) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ 3 is match('3') }}",
        "{{ x is match('(') }}",
        "{{ x is match('a', ignorecase='yes') }}",
        "{{ x | option('--a', 'no') }}",
        "{{ x | flag(3) }}",
    ],
)
def test_filters_and_tests_refuse_wrong_arguments(source: str) -> None:
    with pytest.raises(InvalidJobError, match="line 1"):
        printed(source, x="a")


# --- preprocessing ------------------------------------------------------------------------------------------


def test_preprocessing_calls_the_functions_with_their_arguments() -> None:
    calls: list[tuple[str, list[str]]] = []

    def expand(name: str, args: list[str]) -> str:
        calls.append((name, args))
        return f"<{name}>"

    text = '{- applicationLoad -}\n{- versionResolver("python", "strict") -} {-nospace-} {- bad-name -}\n'
    assert preprocess(text, expand) == "<applicationLoad>\n<versionResolver> {-nospace-} {- bad-name -}\n"
    assert calls == [("applicationLoad", []), ("versionResolver", ["python", "strict"])]


# --- compiling ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("a\n{{ x }", "line 2: unexpected '}'"),
        ("{% for x in y %}", "line 1: Unexpected end of template"),
        ("{{ x | nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ("\n\n{{ ''.__class__ }}", "line 3: '__class__': the sandbox forbids"),
        ("{{ x['__globals__'] }}", "'__globals__': the sandbox forbids"),
        ("{{ self._TemplateReference__context }}", "the sandbox forbids"),
        ("{% include 'x' %}", "cannot extend, include or import"),
        ("{% extends 'x' %}", "cannot extend, include or import"),
        ("{% import 'x' as y %}", "cannot extend, include or import"),
    ],
)
def test_a_template_that_cannot_compile_is_a_readable_error(source: str, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        compile_template(source, where="the invocation")


def test_underscore_keys_of_a_dict_are_not_internals() -> None:
    assert printed("{{ d._k }} {{ d['_k'] }} {{ _injected_x }}", d={"_k": 1}, _injected_x=2) == "1 1 2"


def test_templates_are_compiled_once_per_text() -> None:
    source = "{{ x }} cached " + str(time.time())
    assert compile_template(source) is compile_template(source)
    assert compile_template(source, quoted=False) is not compile_template(source)


# --- the sandbox: escapes fail or are harmless, nothing grows without bounds -------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(10**9) | list }}",
        "{{ 'x' * 10**8 }}",
        "{{ x * 10**7 }}",
        "{{ 10 ** 100000 }}",
        "{{ lipsum(100000) }}",
        "{{ '{:9999999}'.format(1) }}",
        "{{ '%9999999d' % 1 }}",
        "{{ '%*d' % (9999999, 1) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ x | wordwrap(1) | indent(9999) }}",
        "{{ x | replace('', x) }}",
        "{{ x.replace('a', x) }}",
        "{{ x | join(x) }}",
        "{{ x.join(x) }}",
        "{{ x | format }}{{ '%99999s' | format(1) }}",
        "{{ [1] | slice(1000000000) | list }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro m(s) %}{{ m(s ~ s) }}{% endmacro %}{{ m('ab') }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ x }}{% endfor %}",
        "{{ self }}",
        "{{ namespace }}",
        "{{ joiner }}",
        "{{ lipsum }}",
        "{{ cycler(1).next.__self__ }}",
    ],
)
def test_the_sandbox_refuses_what_would_grow_or_escape(source: str) -> None:
    with pytest.raises(InvalidJobError):
        printed(source, x="a" * 60_000)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ config }}{{ request }}{{ os }}", ""),
        ("{{ cycler('a', 'b').next() }}", "'a'"),
        ("{% set j = joiner(',') %}{{ j() }}{{ j() }}", "''','"),
        ("{% set ns = namespace(n=1) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}", "2"),
        ("{{ dict(a=1).a }} {{ range(3) | list | length }} {{ 2 ** 10 }} {{ 'ab' * 2 }}", "1 3 1024 'abab'"),
        ("{{ lipsum(1, false, 2, 3) | length > 0 }}", "True"),
    ],
)
def test_the_anchors_globals_work_and_harmless_names_print_nothing(source: str, expected: str) -> None:
    assert printed(source) == expected


def test_constant_folding_does_not_run_costly_operations_at_compile_time() -> None:
    # The gateway compiles every application template: these must not be computed then.
    for source in ("{{ 9 ** 9 ** 9 ** 9 }}", "{{ 'x' * 1000000000 }}", "{{ 'x' | center(1000000000) }}",
                   "{{ '%1000000000d' % 1 }}", "{{ ('a' * 30) is match('(a+)+$') }}"):  # fmt: skip
        started = time.perf_counter()
        compile_template(source)
        assert time.perf_counter() - started < 0.5, source


def test_output_is_capped() -> None:
    with pytest.raises(InvalidJobError, match="longer than"):
        printed("{% for i in range(30) %}{{ x }}{% endfor %}", x="a" * 60_000)
    assert MAX_OUTPUT_CHARACTERS == 1_048_576


# --- parameters -------------------------------------------------------------------------------------------


def parameter(name: str, kind: str, **fields: Any) -> AppParameter:
    return AppParameter.model_validate({"name": name, "type": kind, **fields})


def app(*parameters: AppParameter, template: str = "{{ 1 }}", **fields: Any) -> JobApplication:
    body = {"name": "a", "version": "1", "invocation": [{"type": "jinja", "template": template}], **fields}
    return JobApplication.model_validate(body).model_copy(update={"parameters": list(parameters)})


def value(kind: str, raw: Any = None, **fields: Any) -> ParameterValue:
    return ParameterValue.model_validate({"type": kind, "value": raw, **fields})


def local(name: str, given: ParameterValue) -> str:
    return f"/local{given.path}"


def bound(application: JobApplication, **given: ParameterValue) -> dict[str, Any]:
    return bind_parameters(application, given, local_path=local)


def test_defaults_bare_or_wrapped_fill_in() -> None:
    application = app(
        parameter("n", "integer", defaultValue=3),
        parameter("f", "floating_point", defaultValue={"value": 1}),
        parameter("t", "text", defaultValue="x"),
        parameter("b", "boolean", defaultValue={"value": False}),
        parameter("e", "enumeration", defaultValue="small"),
        parameter("bad", "integer", defaultValue="3", optional=True),  # the app's mistake: ignored
        parameter("file", "input_file", defaultValue="/1/x", optional=True),  # never defaulted (anchor)
    )
    assert bound(application) == {"n": 3, "f": 1.0, "t": "x", "b": False, "e": "small"}
    assert bound(application, n=value("integer", 5)) == {"n": 5, "f": 1.0, "t": "x", "b": False, "e": "small"}


def test_values_of_every_type_become_context_values_and_argument_texts() -> None:
    application = app(
        parameter("t", "text"),
        parameter("area", "textarea"),
        parameter("n", "integer"),
        parameter("f", "floating_point"),
        parameter("on", "boolean", trueValue="yes", falseValue="no"),
        parameter("off", "boolean"),
        parameter("e", "enumeration", options=[{"name": "Small", "value": "s"}, {"name": "Large", "value": "l"}]),
        parameter("file", "input_file"),
        parameter("dir", "input_directory"),
        parameter("peer", "peer"),
        parameter("lic", "license_server"),
        parameter("ip", "network_ip"),
        parameter("link", "ingress"),
        parameter("net", "private_network"),
        parameter("mods", "modules"),
        parameter("about", "readme"),
    )
    given = {
        "t": value("text", "a b"),
        "area": value("text", "x\ny"),
        "n": value("integer", 3.0),
        "f": value("floating_point", 2),
        "on": value("boolean", True),
        "off": value("boolean", False),
        "e": value("text", "Large"),
        "file": value("file", path="/17/in.csv"),
        "dir": value("file", path="/17/data"),
        "peer": value("peer", hostname="j-1", jobId="1"),
        "lic": value("license_server", id="lic-1"),
        "ip": value("network", id="ip-1"),
        "link": value("ingress", id="in-1"),
        "net": value("private_network", id="net-1"),
        "mods": value("modules", modules=["GCC/12"]),
    }
    values = bind(application, given, local_path=local)
    assert {name: v.context for name, v in values.items()} == {
        "t": "a b", "area": "x\ny", "n": 3, "f": 2.0, "on": True, "off": False, "e": "Large",
        "file": "/local/17/in.csv", "dir": "/local/17/data", "peer": "j-1", "lic": "lic-1", "ip": "ip-1",
        "link": "in-1", "net": "net-1", "mods": ["GCC/12"],
    }  # fmt: skip
    assert {name: v.argument for name, v in values.items()} == {
        "t": "a b", "area": "x\ny", "n": "3", "f": "2", "on": "yes", "off": "false", "e": "l",
        "file": "/local/17/in.csv", "dir": "/local/17/data", "peer": "j-1", "lic": "lic-1", "ip": "ip-1",
        "link": "in-1", "net": "net-1", "mods": "",
    }  # fmt: skip
    assert parameter_argument(application.parameters[6], value("text", "s"), local_path=local) == "s"


def test_undeclared_values_are_dropped_but_injected_ones_kept() -> None:
    given = {
        "ucMetricSampleRate": value("text", "0ms"),
        "_injected_slurmAccount": value("text", "acct"),
        "_injected_modules": value("modules", modules=["Python/3.11"]),
        "_injected_n": value("integer", 2),
        "_injected_file": value("file", path="/1/x"),
    }
    assert bound(app(), **given) == {
        "_injected_slurmAccount": "acct",
        "_injected_modules": ["Python/3.11"],
        "_injected_n": 2,
    }


@pytest.mark.parametrize(
    ("declared", "given", "message"),
    [
        (parameter("n", "integer"), value("text", "3"), "parameter 'n' takes a value of type integer, not text"),
        (parameter("n", "integer", title="Count"), value("integer", "3"), r"'n' must be an integer, not text"),
        (parameter("n", "integer"), value("integer", 2.5), "must be an integer"),
        (parameter("n", "integer"), value("integer", True), "must be an integer, not a boolean"),
        (parameter("n", "integer", min=1, max=10), value("integer", 11), "at most 10"),
        (parameter("n", "integer", min=1, max=10), value("integer", 0), "at least 1"),
        (parameter("n", "integer"), value("integer", 2**63), "finite number below"),
        (parameter("f", "floating_point"), value("floating_point", float("inf")), "finite number"),
        (parameter("f", "floating_point"), value("floating_point", "1"), "must be a number"),
        (parameter("b", "boolean"), value("boolean", "true"), "must be true or false"),
        (parameter("t", "text"), value("text", 3), "must be text"),
        (parameter("t", "text"), value("text", "a\0b"), "NUL"),
        (parameter("t", "textarea"), value("text", "x" * 65_537), "65537 bytes long"),
        (parameter("t", "text"), value("text", "\ud800"), "not valid Unicode"),
        (parameter("e", "enumeration", options=[{"name": "A", "value": "a"}]), value("text", "b"), "one of 'a'"),
        (parameter("f", "input_file"), value("file"), "has no path"),
        (parameter("p", "peer"), value("peer"), "has no hostname"),
        (parameter("w", "workflow"), value("workflow"), "workflows are not supported"),
        (parameter("x", "nonsense"), value("text", "a"), "does not know"),
    ],
)
def test_a_wrong_value_is_refused_naming_the_parameter(
    declared: AppParameter, given: ParameterValue, message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        bound(app(declared), **{declared.name: given})


def test_a_required_parameter_without_value_is_refused() -> None:
    with pytest.raises(InvalidJobError, match=r"parameter 'input' \(Input file\) is required"):
        bound(app(parameter("input", "input_file", title="Input file")))
    assert bound(app(parameter("input", "input_file", optional=True))) == {}


# --- the gateway's check -------------------------------------------------------------------------------------


def test_check_application_accepts_a_good_application_quickly() -> None:
    application = app(
        parameter("input", "input_file"),
        parameter("count", "integer", optional=True, defaultValue=3),
        template='{- applicationLoad -}\n{{ srun() }} run --in {{ input }} {{ count | option("-n") }}\n',
        environment={"MODE": {"type": "jinja", "template": "{{ count }}"}, "PLAIN": {"type": "word", "word": "x"}},
        sbatch={"ntasks": {"type": "word", "word": "2"}, "exclusive": {"type": "word", "word": ""}},
    )
    given = {"input": value("file", path="/17/x"), "ucMetricSampleRate": value("text", "0ms")}
    check_application(application, given)
    rounds = 1000
    started = time.perf_counter()
    for _ in range(rounds):
        check_application(application, given)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 0.005, f"{per_call * 1000:.3f} ms per check"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"invocation": [{"type": "jinja", "template": "ok\n{{ x }"}]}, "the invocation, line 2"),
        ({"invocation": [{"type": "word", "word": "a"}, {"type": "jinja", "template": "{{"}]}, "invocation part 2"),
        ({"invocation": [{"type": "env", "variable": "A B"}, {"type": "word", "word": "a"}]}, "not an environment"),
        ({"environment": {"A;rm": {"type": "word", "word": "x"}}}, "not an environment variable name"),
        ({"environment": {"A": {"type": "jinja", "template": "{% if %}"}}}, "environment variable A, line 1"),
        ({"sbatch": {"account": {"type": "word", "word": "x"}}}, "set by the provider"),
        ({"sbatch": {"job-name": {"type": "word", "word": "x"}}}, "set by the provider"),
        ({"sbatch": {"acc": {"type": "word", "word": "x"}}}, "cannot be set by an application"),
        ({"sbatch": {"x y": {"type": "word", "word": "x"}}}, "not a Slurm option name"),
        ({"sbatch": {"ntasks": {"type": "jinja", "template": "{{"}}}, "sbatch option --ntasks, line 1"),
        ({"sbatch": {"ntasks": {"type": "word", "word": "4\n#SBATCH --account=x"}}}, "line break"),
        ({"sbatch": {"ntasks": {"type": "word", "word": " "}}}, "needs a value"),
        ({"sbatch": {"requeue": {"type": "word", "word": "yes"}}}, "takes no value"),
    ],
)
def test_check_application_refuses_what_cannot_become_a_script(fields: dict[str, Any], message: str) -> None:
    application = JobApplication.model_validate({"name": "a", "version": "1", **fields})
    with pytest.raises(InvalidJobError, match=message):
        check_application(application, {})


def test_the_sbatch_allow_list() -> None:
    assert check_sbatch_option("ntasks") == "value"
    assert check_sbatch_option("requeue") == "flag"
    assert check_sbatch_option("exclusive") == "optional"
    for refused in ("account", "partition", "parsable", "comment", "job-name", "array", "wrap", "uid", "A", "--x"):
        with pytest.raises(InvalidJobError):
            check_sbatch_option(refused)
