"""Jinja2 in a sandbox with budgets: what subscriptions' templates, addresses and filters
are compiled and rendered with.

Jinja's ``ImmutableSandboxedEnvironment`` already refuses Python internals (attributes
starting with ``_``, ``mro``, function globals) and mutating the context; there are no
loaders, so no file is ever read, and nothing in it reaches the network. What it does not
bound is work: ``{% for i in range(10**9) %}``, ``{{ 'x' * 10**9 }}`` or a string doubled
forty times would hold a worker thread or its memory. So every render runs on a budget:

* steps: each loop iteration and each call (method, macro, filter) is one; too many and
  the render stops;
* time: a deadline checked at every step (a backstop; the step budget comes first);
* size: each operation that can multiply its input (``*``, ``%``, padding, ``replace``,
  ``join``, ``indent``…) is checked *before* it allocates; every string made is counted
  against a total, and the output is streamed and stopped at ``MAX_OUTPUT``.

The checks are put in place by rewriting the template's syntax tree before compiling:
each ``for`` iterates through a counting guard, and every ``~`` concatenation and printed
expression is measured. No thread is ever killed: a render stops itself.
"""

import contextvars
import functools
import math
import re
import string
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from delivery.errors import RenderError, TemplateRefused  # re-exported: they lived here

#: Longest rendered output of one part (subject, text, HTML or address).
MAX_OUTPUT = 128 * 1024
#: Most characters all the strings one render makes may add up to (captured blocks,
#: macro results and discarded intermediates included).
MAX_PRODUCED = 8 * 1024 * 1024
#: Loop iterations and calls one render may make.
MAX_STEPS = 100_000
#: Longest a render may run, checked at every step.
MAX_SECONDS = 2.0
#: Most items ``range`` and the list-making operations may produce.
MAX_ITEMS = 10_000
#: Largest integer (in bits) arithmetic may produce: enough for any id or amount.
MAX_INT_BITS = 4096
#: Longest template source.
MAX_SOURCE = 64 * 1024

#: Names the guards are reachable by in compiled templates; a template may not use them.
_LOOP, _EMIT, _MADE = "_delivery_loop", "_delivery_emit", "_delivery_made"
RESERVED = frozenset({_LOOP, _EMIT, _MADE})

#: String methods that cannot make more than they are given. The rest are checked
#: (``_checked_str_method``) or refused.
_PLAIN = (
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal "
    "isdigit isidentifier islower isnumeric isprintable isspace istitle isupper lower "
    "lstrip partition removeprefix removesuffix rfind rindex rpartition rsplit rstrip "
    "split splitlines startswith strip swapcase title upper"
)
_PLAIN_STR_METHODS = frozenset(_PLAIN.split())
_CHECKED_STR_METHODS = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"}
)
#: Widths and precisions in ``%`` formatting: ``%-10.3s``, ``%*d``.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


@dataclass
class _Budget:
    deadline: float
    steps: int = 0
    produced: int = 0
    started: float = field(default_factory=time.monotonic)

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise RenderError(f"the template did more than {MAX_STEPS} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise RenderError(f"the template took longer than {MAX_SECONDS:g}s")

    def made(self, value: Any) -> None:
        if isinstance(value, str):
            self.produced += len(value)
            if self.produced > MAX_PRODUCED:
                raise RenderError(f"the template made more than {MAX_PRODUCED} characters")
            if len(value) > MAX_OUTPUT:
                raise RenderError(f"the template made a string longer than {MAX_OUTPUT}")
        elif isinstance(value, _CONTAINERS):
            if len(value) > MAX_ITEMS:
                raise RenderError(f"the template made a collection of more than {MAX_ITEMS} items")
            # Many references to one long string are cheap to make and huge once printed.
            if _printed_size(value, MAX_OUTPUT) > MAX_OUTPUT:
                raise RenderError(
                    f"the template made a collection longer than {MAX_OUTPUT} once printed"
                )


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _printed_size(value: Any, limit: int) -> int:
    """Roughly how long ``value`` is once printed, counting no further than ``limit``."""
    size = 0
    pending = [value]
    while pending and size <= limit:
        item = pending.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            size += 2 + 4 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, _CONTAINERS):
            size += 2 + 2 * len(item)
            pending.extend(item)
        else:
            size += 8
    return size


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("budget", default=None)


def _current() -> _Budget:
    budget = _budget.get()
    if budget is None:
        # Rendering outside ``budgeted`` would run unbounded: refuse instead.
        raise RenderError("templates render only within a budget")
    return budget


def _too_big(what: str) -> RenderError:
    return RenderError(f"{what} would be longer than {MAX_OUTPUT} characters")


def _width(value: Any, what: str) -> None:
    if isinstance(value, int) and value > MAX_OUTPUT:
        raise _too_big(what)


def _check_percent(fmt: str, what: str = "% formatting") -> None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*" or (part and int(part) > MAX_OUTPUT):
                raise _too_big(what)


def _check_format_string(fmt: str) -> None:
    """Widths and precisions in a ``str.format`` string, nested fields included."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will say what is wrong with it
    for _, _, spec, _ in parsed:
        if spec:
            if "{" in spec:
                raise RenderError("nested format fields are not allowed in templates")
            for number in re.findall(r"\d+", spec):
                if int(number) > MAX_OUTPUT:
                    raise _too_big("str.format")


def _joined_size(items: list[Any], separator: str) -> int:
    return sum(len(str(item)) for item in items) + len(separator) * max(0, len(items) - 1)


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


class _Guarded(Iterator[Any]):
    """A loop's iterable, one step per iteration (and its body's fixed text)."""

    def __init__(self, iterable: Iterable[Any], static: int) -> None:
        self._iterator = iter(iterable)
        self._static = static

    def __iter__(self) -> "_Guarded":
        return self

    def __next__(self) -> Any:
        budget = _current()
        budget.step()
        budget.produced += self._static
        return next(self._iterator)


def _loop(iterable: Any, static: int = 0) -> Any:
    return _Guarded(iterable, static)


def _emit(value: Any) -> Any:
    # Measured as printed; returned unchanged so autoescaping still applies.
    _current().made(value if isinstance(value, str) else str(value))
    return value


def _made(value: Any) -> Any:
    _current().made(value)
    return value


def _safe_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_ITEMS:
        raise RenderError(f"range of {len(result)} items; the limit is {MAX_ITEMS}")
    return result


class _Guards(NodeTransformer):
    """Rewrites a parsed template so its loops, concatenations and output are measured."""

    def _call(self, name: str, node: nodes.Expr, *extra: nodes.Expr) -> nodes.Call:
        return nodes.Call(
            nodes.Name(name, "load", lineno=node.lineno),
            [node, *extra],
            [],
            None,
            None,
            lineno=node.lineno,
        )

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        static = sum(len(data.data) for data in _body_data(node))
        node.iter = self._call(
            _LOOP, typing.cast(nodes.Expr, node.iter), nodes.Const(static, lineno=node.lineno)
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._call(_MADE, node)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.TemplateData) else self._call(_EMIT, child)
            for child in node.nodes
        ]
        return node


def _body_data(node: nodes.For) -> Iterator[nodes.TemplateData]:
    for child in node.body:
        yield from child.find_all(nodes.TemplateData)
        if isinstance(child, nodes.TemplateData):
            yield child


def _static_checks(tree: nodes.Node) -> None:
    """Refuse, before anything runs, what the sandbox would refuse at render time."""
    for name in tree.find_all(nodes.Name):
        if name.name in RESERVED:
            raise TemplateRefused(f"the name {name.name!r} is reserved", lineno=name.lineno)
    for getattr_ in tree.find_all(nodes.Getattr):
        if getattr_.attr.startswith("_"):
            raise TemplateRefused(
                f"attribute {getattr_.attr!r} is not allowed (no names starting with '_')",
                lineno=getattr_.lineno,
            )
    for getitem in tree.find_all(nodes.Getitem):
        key = getitem.arg
        if isinstance(key, nodes.Const) and isinstance(key.value, str) and key.value[:1] == "_":
            raise TemplateRefused(
                f"item {key.value!r} is not allowed (no names starting with '_')",
                lineno=getitem.lineno,
            )
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateRefused(
            "templates cannot include, import or extend others", lineno=node.lineno
        )


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with every amplifying operation checked against the render's budget."""

    # Intercepted so they are checked at render time, and never folded into constants
    # at compile time (``'x' * 10**9`` would otherwise be built while compiling).
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=StrictUndefined, loader=None)
        self.globals["range"] = _safe_range
        self.globals["lipsum"] = _safe_lipsum(
            typing.cast(Callable[..., Any], self.globals["lipsum"])
        )
        self.globals.update({_LOOP: _loop, _EMIT: _emit, _MADE: _made})
        for name, function in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, function)
        self._compiled: Callable[[str], Any] = functools.lru_cache(maxsize=512)(
            self._compile_template
        )
        self._expressions: Callable[[str], Any] = functools.lru_cache(maxsize=512)(
            self._compile_expression
        )

    # -- compiling ---------------------------------------------------------------------

    def template(self, source: str) -> Any:
        """The compiled template (cached by source).

        Raises:
            TemplateRefused: it does not compile, naming the line, or uses what is forbidden.
        """
        return self._compiled(source)

    def expression(self, source: str) -> Any:
        """A compiled expression (a subscription's filter), cached by source.

        Raises:
            TemplateRefused: it does not compile or uses what is forbidden.
        """
        return self._expressions(source)

    def _compile_template(self, source: str) -> Any:
        _check_source(source)
        try:
            tree = self.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateRefused(f"line {exc.lineno}: {exc.message}", lineno=exc.lineno) from None
        return self._from_tree(tree)

    def _compile_expression(self, source: str) -> Any:
        _check_source(source)
        try:
            parser = Parser(self, source, state="variable")
            expr = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError(
                    "unexpected text after the expression", parser.stream.current.lineno
                )
        except TemplateSyntaxError as exc:
            raise TemplateRefused(f"line {exc.lineno}: {exc.message}", lineno=exc.lineno) from None
        body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
        return self._from_tree(nodes.Template(body, lineno=1))

    def _from_tree(self, tree: nodes.Template) -> Any:
        _static_checks(tree)
        guarded = _Guards().visit(tree)
        guarded.set_environment(self)
        try:
            code = self.compile(guarded)
        except TemplateSyntaxError as exc:
            raise TemplateRefused(f"line {exc.lineno}: {exc.message}", lineno=exc.lineno) from None
        return self.template_class.from_code(self, code, self.make_globals(None), None)

    # -- rendering ---------------------------------------------------------------------

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __obj is _emit or __obj is _made or __obj is _loop:
            # The guards the rewrite put in: not the template's own work, and safe.
            return __obj(*args)
        budget = _current()
        budget.step()
        result = super().call(__context, __obj, *args, **kwargs)
        budget.made(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        return _checked_str_method(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        if isinstance(argument, str):
            return _checked_str_method(obj, argument, value)
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        template: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_string(template)
            return formatter(*args, **kwargs)

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _current().step()
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_percent(left)
        result = super().call_binop(context, operator, left, right)
        _current().made(result)
        return result


def _check_source(source: str) -> None:
    if len(source) > MAX_SOURCE:
        raise TemplateRefused(f"the template is longer than {MAX_SOURCE} characters")
    if "\x00" in source:
        raise TemplateRefused("the template contains a NUL character")


def _check_repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            limit = MAX_OUTPUT if isinstance(seq, str) else MAX_ITEMS
            if len(seq) * times > limit:
                raise RenderError(f"repeating that {times} times would exceed {limit}")
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_INT_BITS
    ):
        raise RenderError(f"numbers larger than {MAX_INT_BITS} bits are not allowed")


def _check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and math.log2(abs(base)) * exponent > MAX_INT_BITS
    ):
        raise RenderError(f"numbers larger than {MAX_INT_BITS} bits are not allowed")


def _checked_str_method(obj: Any, name: str, value: Any) -> Any:
    """String methods that could make more than they are given, checked first."""
    if not isinstance(obj, str) or not callable(value) or name in ("format", "format_map"):
        return value
    if name in _PLAIN_STR_METHODS:
        return value
    if name not in _CHECKED_STR_METHODS:
        raise SecurityError(f"str.{name} is not available in templates")

    def checked(*args: Any, **kwargs: Any) -> Any:
        if name in ("center", "ljust", "rjust", "zfill") and args:
            _width(args[0], f"str.{name}")
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int) and len(obj) + obj.count("\t") * size > MAX_OUTPUT:
                raise _too_big("str.expandtabs")
        elif name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count")
            if _replaced_size(obj, str(args[0]), str(args[1]), count) > MAX_OUTPUT:
                raise _too_big("str.replace")
        elif name == "join" and args:
            items = list(_loop(args[0]))
            if _joined_size(items, obj) > MAX_OUTPUT:
                raise _too_big("str.join")
            return value(items)
        return value(*args, **kwargs)

    return checked


def _guard_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, counted as a step, its amplifying arguments checked, its result measured."""

    # Jinja passes the context, eval context or environment first to filters marked so.
    passed = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(function)  # keeps Jinja's pass_context/pass_environment markers
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.step()
        values = list(args[passed:])
        _check_filter(name, values, kwargs)
        # ``join`` materialises its input while checking it: pass on what it made.
        result = function(*args[:passed], *values, **kwargs)
        budget.made(result)
        return result

    return guarded


def _argument(values: list[Any], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return values[index] if len(values) > index else kwargs.get(name)


Values = list[Any]
Kwargs = Mapping[str, Any]


def _check_widths(name: str, key: str) -> Callable[[Values, Kwargs], None]:
    def check(values: Values, kwargs: Kwargs) -> None:
        _width(_argument(values, kwargs, 1, key), name)

    return check


def _check_wordwrap(values: Values, kwargs: Kwargs) -> None:
    _width(_argument(values, kwargs, 1, "width"), "wordwrap")
    wrap = _argument(values, kwargs, 3, "wrapstring") or "\n"
    if len(str(values[0])) * (1 + len(str(wrap))) > MAX_OUTPUT:
        raise _too_big("wordwrap")


def _check_indent(values: Values, kwargs: Kwargs) -> None:
    width, text = _argument(values, kwargs, 1, "width"), str(values[0])
    _width(width, "indent")
    pad = len(width) if isinstance(width, str) else (width if isinstance(width, int) else 4)
    if len(text) + (text.count("\n") + 1) * pad > MAX_OUTPUT:
        raise _too_big("indent")


def _check_replace(values: Values, kwargs: Kwargs) -> None:
    old, new = _argument(values, kwargs, 1, "old"), _argument(values, kwargs, 2, "new")
    count = _argument(values, kwargs, 3, "count")
    if _replaced_size(str(values[0]), str(old), str(new), count) > MAX_OUTPUT:
        raise _too_big("replace")


def _check_join(values: Values, kwargs: Kwargs) -> None:
    if isinstance(values[0], str):
        return
    # Materialised here (each item a step) so the size is known before joining.
    items = list(_loop(values[0]))
    values[0] = items
    if _joined_size(items, str(_argument(values, kwargs, 1, "d") or "")) > MAX_OUTPUT:
        raise _too_big("join")


def _check_count(name: str, key: str, limit: int) -> Callable[[Values, Kwargs], None]:
    def check(values: Values, kwargs: Kwargs) -> None:
        count = _argument(values, kwargs, 1, key)
        if isinstance(count, int) and count > limit:
            raise RenderError(f"{name} takes at most {limit}")

    return check


def _check_format(values: Values, kwargs: Kwargs) -> None:
    if isinstance(values[0], str):
        _check_percent(values[0], "the format filter")


#: Filters that can make more than they are given, and the check each gets first.
_FILTER_CHECKS: dict[str, Callable[[Values, Kwargs], None]] = {
    "center": _check_widths("center", "width"),
    "truncate": _check_widths("truncate", "length"),
    "wordwrap": _check_wordwrap,
    "indent": _check_indent,
    "replace": _check_replace,
    "join": _check_join,
    "batch": _check_count("batch", "linecount", MAX_ITEMS),
    "slice": _check_count("slice", "slices", MAX_ITEMS),
    "tojson": _check_count("tojson", "indent", 16),
    "format": _check_format,
}


def _check_filter(name: str, values: Values, kwargs: Kwargs) -> None:
    """Refuse a filter call that would make more than the sandbox allows, before it runs."""
    check = _FILTER_CHECKS.get(name)
    if check is not None and values:
        check(values, kwargs)


def _safe_lipsum(lipsum: Callable[..., Any]) -> Callable[..., Any]:
    def safe(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
        if n > 100 or max > 1000:
            raise RenderError("lipsum makes at most 100 paragraphs of 1000 words")
        return lipsum(n=n, html=html, min=min, max=max)

    return safe


def budgeted(function: Callable[[], Any]) -> Any:
    """Run ``function`` (a render) on a fresh budget.

    Raises:
        RenderError: the template failed or went over its budget; the reason says which.
    """
    token = _budget.set(_Budget(deadline=time.monotonic() + MAX_SECONDS))
    try:
        return function()
    except (RenderError, TemplateRefused):
        raise
    except SecurityError as exc:
        raise RenderError(f"not allowed: {exc}") from None
    except TemplateError as exc:
        raise RenderError(str(exc) or type(exc).__name__) from None
    except RecursionError:
        raise RenderError("the template recursed too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a template is the template's
        raise RenderError(f"{type(exc).__name__}: {exc}"[:500]) from None
    finally:
        _budget.reset(token)


def render(template: Any, variables: Mapping[str, Any]) -> str:
    """Render on a budget, streaming, and stop as soon as the output is too long.

    Raises:
        RenderError: the template failed on these variables or went over its budget.
    """

    def run() -> str:
        parts: list[str] = []
        size = 0
        stream = template.generate(variables)
        try:
            for chunk in stream:
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise RenderError(f"the output is longer than {MAX_OUTPUT} characters")
                parts.append(chunk)
        finally:
            stream.close()
        return "".join(parts)

    result: str = budgeted(run)
    return result


def evaluate(expression: Any, variables: Mapping[str, Any]) -> Any:
    """The value of a compiled expression.

    Raises:
        RenderError: it failed on these variables or went over its budget.
    """

    def run() -> Any:
        context = expression.new_context(dict(variables))
        for _ in expression.root_render_func(context):
            pass
        return context.vars["result"]

    return budgeted(run)


#: The environments: plain text (subjects, text, addresses, filters) and HTML (escaped).
TEXT = BudgetedEnvironment(autoescape=False)
HTML = BudgetedEnvironment(autoescape=True)

__all__ = [
    "HTML",
    "MAX_OUTPUT",
    "TEXT",
    "BudgetedEnvironment",
    "Markup",
    "RenderError",
    "TemplateRefused",
    "evaluate",
    "render",
]
