"""The template sandbox: Python internals refused, work and output bounded."""

import tracemalloc

import pytest

from delivery.notifications import sandbox
from delivery.notifications.sandbox import (
    HTML,
    MAX_OUTPUT,
    TEXT,
    RenderError,
    TemplateRefused,
    evaluate,
    render,
)


def rendered(source: str, **variables: object) -> str:
    return render(TEXT.template(source), variables)


def test_renders_the_context() -> None:
    out = rendered(
        "Order {{ order.id }} for {{ name|title }}:{% for i in items %} {{ i }}{% endfor %}",
        order={"id": 42},
        name="ann lee",
        items=["a", "b"],
    )
    assert out == "Order 42 for Ann Lee: a b"


def test_html_is_escaped_and_text_is_not() -> None:
    assert render(HTML.template("<p>{{ x }}</p>"), {"x": "<b>&"}) == "<p>&lt;b&gt;&amp;</p>"
    assert rendered("{{ x }}", x="<b>") == "<b>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''['__class__'] }}",
        "{{ joiner.__init__.__globals__.os }}",
    ],
)
def test_python_internals_are_refused_when_compiled(source: str) -> None:
    with pytest.raises(TemplateRefused, match="not allowed"):
        TEXT.template(source)


@pytest.mark.parametrize(
    "source",
    [
        # the same reach, spelt so that only the sandbox at render time can see it
        "{{ ''|attr('__class__') }}",
        "{{ (cycler|attr('__init__'))|attr('__globals__') }}",
        "{{ lipsum|attr('__globals__') }}",
    ],
)
def test_python_internals_are_refused_when_rendered(source: str) -> None:
    with pytest.raises(RenderError):
        rendered(source)


def test_templates_cannot_read_files() -> None:
    for source in ("{% include '/etc/passwd' %}", "{% import 'x' as y %}", "{% extends 'b' %}"):
        with pytest.raises(TemplateRefused, match="include, import or extend"):
            TEXT.template(source)


def test_a_context_cannot_be_mutated() -> None:
    with pytest.raises(RenderError):
        rendered("{{ items.append(1) }}", items=[])


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% for i in range(10**9) %}x{% endfor %}", "range of 1000000000 items"),
        (
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            "loop iterations and calls",
        ),
        (
            "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
            "{{ f(60) }}",
            "loop iterations and calls",
        ),
        ("{% for x in xs recursive %}{{ loop(xs) }}{% endfor %}", "recursed too deeply"),
    ],
)
def test_unbounded_work_is_stopped(
    source: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step budget is what stops these; the time limit is a backstop, which on a loaded
    # machine could come first and give another reason.
    monkeypatch.setattr(sandbox, "MAX_SECONDS", 120.0)
    with pytest.raises(RenderError, match=reason):
        rendered(source, xs=[1, 2])


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [0] * 10**9 }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'.ljust(10**9) }}",
        "{{ 'x'.zfill(10**9) }}",
        "{{ '%999999999s' % 1 }}",
        "{{ '%999999999s'|format(1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ ('x' * 100000).replace('', 'yyyyy') }}",
        "{{ ('x' * 100000)|replace('', 'yyyyy') }}",
        "{{ range(10000)|join('x' * 100000) }}",
        "{{ ('a\n' * 50000)|indent(100) }}",
        "{{ lipsum(n=10**6) }}",
        "{{ 2 ** (10**9) }}",
        "{% set ns = namespace(x=2) %}"
        "{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
        "{% set s = 'x' * 100000 %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s }}",
        "{% set x %}{% for i in range(10000) %}{{ 'y' * 100000 }}{% endfor %}{% endset %}",
        "{% for i in range(10000) %}{{ 'y' * 100000 }}{% endfor %}",
        "{{ dict.fromkeys(range(10000), 'x' * 100000) }}",
        "{{ ['x' * 100000] * 10000 }}",
        "{% set ns = namespace(l=[]) %}{% for i in range(50) %}"
        "{% set ns.l = ns.l + ['x' * 100000] %}{% endfor %}",
    ],
)
def test_output_bombs_are_refused_before_they_are_built(source: str) -> None:
    with pytest.raises(RenderError):
        rendered(source)


def test_output_is_bounded_while_streaming() -> None:
    with pytest.raises(RenderError, match="output is longer"):
        rendered("{% for i in range(100) %}{{ 'y' * 10000 }}{% endfor %}")
    assert len(rendered("{{ 'y' * n }}", n=MAX_OUTPUT)) == MAX_OUTPUT


def test_ordinary_numbers_and_formatting_still_work() -> None:
    out = rendered("{{ '{} {:>6}'.format(a, n) }} {{ '%05d'|format(n) }} {{ n * 3 }}", a="x", n=7)
    assert out == "x      7 00007 21"


def test_a_missing_variable_fails_with_its_name() -> None:
    with pytest.raises(RenderError, match="'emial' is undefined"):
        rendered("{{ emial }}", email="a@example.com")
    assert rendered("{{ coupon|default('none') }}") == "none"


def test_a_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateRefused, match="line 3") as caught:
        TEXT.template("Hello\n{{ name }}\n{% if %}")
    assert caught.value.lineno == 3


def test_reserved_names_are_refused() -> None:
    with pytest.raises(TemplateRefused, match="reserved"):
        TEXT.template("{% set _delivery_loop = 1 %}")


def test_expressions_for_filters() -> None:
    ctx = {"order": {"total": 150}, "vip": False}
    assert evaluate(TEXT.expression("order.total > 100"), ctx) is True
    assert evaluate(TEXT.expression("vip or order.total > 200"), ctx) is False
    with pytest.raises(TemplateRefused, match="after the expression"):
        TEXT.expression("order.total > 100 }} {{")
    with pytest.raises(TemplateRefused, match="not allowed"):
        TEXT.expression("order.__class__")
    with pytest.raises(RenderError, match="range"):
        evaluate(TEXT.expression("range(10**9)|list"), {})


@pytest.mark.parametrize(
    "source",
    [
        "{{ dict.fromkeys(range(10000), 'x' * 100000) }}",
        "{{ ('x' * 100000)|replace('', 'yyyyy') }}",
        "{{ 'x'|center(10**9) }}",
        "{% set x %}{% for i in range(10000) %}{{ 'y' * 100000 }}{% endfor %}{% endset %}",
    ],
)
def test_bombs_are_refused_without_building_them(source: str) -> None:
    # Refusing after building a gigabyte would still take the worker down: measure.
    tracemalloc.start()
    try:
        with pytest.raises(RenderError):
            rendered(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20
