"""Log files: canaries anywhere in them; without canaries, text where a log line should hold ids and names.

Every line our processes write is one of a few shapes (cipherfeed's own ``feed.logs`` format, uvicorn's, the CLI's
``cipherfeed: ...``) and its message fills a template in the source of cipherfeed, uvicorn or arq: the first
argument of a logging call, or a ``cipherfeed: ...`` string. The templates are read from that source (once per
audit) and made into one pattern. A message that fills a known template is judged by what was filled in (ids,
names, numbers, short reasons: a sentence there is a leak, say an exception message carrying a post); a message
that fills none, and a line of no known shape, is judged whole. Traceback frames (indented) are skipped: they hold
source lines; the exception's own line is judged like any other.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote_plus

from feed.audit.database import scan_files
from feed.audit.detect import Needle, looks_like_text
from feed.audit.report import Progress, Report

SOURCES = ("feed", "jobs", "uvicorn", "arq")
_LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal"})
_LEVEL = r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)"
SHAPES = (
    re.compile(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {_LEVEL} [\w.]+: (?P<message>.*)"),  # feed.logs
    re.compile(rf"{_LEVEL}:\s+(?P<message>.*)"),  # uvicorn
    re.compile(r"(?P<message>cipherfeed: .*)"),  # the CLI
)
_SKIPPED = re.compile(
    r"\s|Traceback \(most recent call last\):$|$"
    r"|The above exception was the direct cause of the following exception:$"
    r"|During handling of the above exception, another exception occurred:$"
)
_MIN_WORDING = 12
_MAX_MESSAGE = 4096  # longer messages are judged whole (a template's lazy groups cost more the longer the line)
_NUMBER = {"d": r"(-?\d+)", "i": r"(-?\d+)", "u": r"(-?\d+)", "f": r"(-?[\d.]+|nan|inf|-inf)",
           "F": r"(-?[\d.]+|NAN|INF|-INF)"}  # fmt: skip
_STATUS_LINES = frozenset(f"{status.value} {status.phrase}" for status in HTTPStatus)  # uvicorn's access log
_SPECIFIER = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")


def scan_logs(paths: Sequence[Path], found: Sequence[Needle], report: Report, progress: Progress) -> None:
    """Canaries anywhere in the files, and text in lines or in what a line's template was filled with."""
    scan_files(paths, "logs", found, report, progress)
    for path in paths:
        try:
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if reason := judge(line.decode("utf-8", "replace").rstrip("\r\n")):
                        report.find("logs", f"{path} line {number}", "looks like text", reason)
        except OSError as exc:
            report.unchecked[f"logs:{path}"] = exc.strerror or type(exc).__name__


def judge(line: str) -> str | None:
    """None for a line that holds no text, else why it seems to."""
    if _SKIPPED.match(line):
        return None
    for shape in SHAPES:
        if shaped := shape.fullmatch(line):
            message = shaped.group("message")
            break
    else:
        return looks_like_text(line.encode())
    filled = templates().fullmatch(message) if len(message) <= _MAX_MESSAGE else None
    if filled is None:
        return looks_like_text(message.encode())
    reason = _text_in(filled.groups())
    if reason is None:
        return None
    # The first template that fits may have cut a message of ours in two; is there a fill with nothing but ours?
    for one in each_template():
        if (other := one.fullmatch(message)) is not None and _text_in(other.groups()) is None:
            return None
    return f"a logged value: {reason}"


def _text_in(values: Sequence[str | None]) -> str | None:
    for value in values:
        if not value or value in _STATUS_LINES:
            continue
        if (reason := looks_like_text(unquote_plus(value).encode())) and not our_words().fullmatch(value):
            return reason
    return None


@functools.cache
def templates() -> re.Pattern[str]:
    """Every known message template as one pattern: each template's filled-in parts are its groups (the others
    are None), the most specific templates first."""
    return _alternation(set(_templates()))


@functools.cache
def each_template() -> list[re.Pattern[str]]:
    return [re.compile(_pattern(t), re.DOTALL) for t in _ordered(set(_templates()))]


@functools.cache
def our_words() -> re.Pattern[str]:
    """Every string of our own source (constants, and f-strings with their fields as wildcards): a value that is one
    of them (an error message of ours that a line was filled with, say) is ours, not someone's text."""
    return _alternation(set(_strings(("feed", "jobs"))))


def _alternation(known: set[str]) -> re.Pattern[str]:
    return re.compile("|".join(_pattern(t) for t in _ordered(known)), re.DOTALL)


def _ordered(known: set[str]) -> list[str]:
    return sorted(known, key=lambda t: (-len(_SPECIFIER.sub("", t)), t))


def _pattern(template: str) -> str:
    parts: list[str] = []
    at = 0
    for spec in _SPECIFIER.finditer(template):
        parts.append(re.escape(template[at : spec.start()]))
        kind = spec.group(1)
        parts.append("%" if kind == "%" else _NUMBER.get(kind, "(.*?)"))
        at = spec.end()
    parts.append(re.escape(template[at:]))
    return "(?:" + "".join(parts) + ")"


# Lines no logging call spells out: uvicorn's access formatter writes the status with its phrase ("303 See Other").
RENDERED = ('%s - "%s %s HTTP/%s" %s',)


def _templates() -> Iterator[str]:
    yield from RENDERED
    for tree in _trees(SOURCES):
        yield from _templates_in(tree)


def _strings(packages: Sequence[str]) -> Iterator[str]:
    """Strings of the source with at least :data:`_MIN_WORDING` characters of their own (an f-string's fields do
    not count: ``f"{a}: {b}"`` would match anything)."""
    for tree in _trees(packages):
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.JoinedStr):
                text = _as_template(node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.replace("%", "%%")
            if text is not None and len(_SPECIFIER.sub("", text)) >= _MIN_WORDING:
                yield text


def _trees(packages: Sequence[str]) -> Iterator[ast.AST]:
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            for path in sorted(Path(folder).rglob("*.py")):
                try:
                    yield ast.parse(path.read_text(encoding="utf-8"))
                except (OSError, SyntaxError, UnicodeDecodeError):
                    continue


def _templates_in(tree: ast.AST) -> Iterator[str]:
    assigned: dict[str, list[ast.expr]] = {}  # a message built first, then logged (``logger.info(message, ...)``)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned.setdefault(node.targets[0].id, []).append(node.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            args = node.args[1:] if method == "log" else node.args if method in _LOG_METHODS else []
            if not args:
                continue
            first = args[0]
            for value in assigned.get(first.id, []) if isinstance(first, ast.Name) else [first]:
                if (text := _as_template(value)) is not None:
                    yield text
        elif isinstance(node, ast.Constant | ast.JoinedStr):
            text = _as_template(node)
            if text is not None and text.startswith("cipherfeed: "):
                yield text


def _as_template(node: ast.expr) -> str | None:
    """A string constant, or an f-string with ``%s`` for each of its replacement fields."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value.replace("%", "%%"))
            else:
                parts.append("%s")
        return "".join(parts)
    return None
