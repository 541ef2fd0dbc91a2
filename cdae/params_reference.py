"""The params reference: every setting's key path and type from the typed dataclasses of
:mod:`cdae.config`, its value in params.yaml's default profile, and its meaning from the inline
comment in params.yaml.

``python -m cdae.params_reference README.md`` rewrites the block between the README's
``<!-- params-reference:start -->`` and ``<!-- params-reference:end -->`` markers; a test checks
that the README's block equals :func:`markdown` of the current code and params.yaml.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path

from cdae import config as cfg

START, END = "<!-- params-reference:start -->", "<!-- params-reference:end -->"
_KEY = re.compile(r"^(\s*)([A-Za-z_]\w*):(.*)$")


def yaml_comments(text: str) -> dict[str, str]:
    """Inline comments of a params.yaml text by key path (``train.lr`` -> "..."), continuation
    comment lines joined; the ``profiles`` and ``graph`` sections are skipped."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if last is not None and len(line) - len(line.lstrip()) > 0:
                out[last] = (out.get(last, "") + " " + stripped.lstrip("# ").strip()).strip()
            continue
        m = _KEY.match(line)
        if not m:
            last = None
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        if stack[0][1] in ("profiles", "graph"):
            last = None
            continue
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        out[path] = comment
        last = path
    return out


def _type_name(tp: object) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(str(m.value) for m in tp)
    origin = typing.get_origin(tp)
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _default(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, Mapping):  # params hold read-only mappings (MappingProxyType)
        return "{" + ", ".join(f"{k}: {_default(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def rows(obj: object, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, type, value) of every leaf setting of the dataclass instance ``obj`` (the
    graph has its own section)."""
    hints = typing.get_type_hints(type(obj))
    out: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.name == "graph":
            continue
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += rows(value, path + ".")
        else:
            out.append((path, _type_name(hints[f.name]), _default(value)))
    return out


def markdown(params_yaml: str) -> str:
    """The reference table: every setting of the code, its value in ``params_yaml`` (default
    profile) and its meaning from the inline comments."""
    import yaml

    comments = yaml_comments(params_yaml)
    params = cfg.resolve(yaml.safe_load(params_yaml), profile="default")
    lines = ["| key | type | default profile | meaning |", "|---|---|---|---|"]
    for path, tp, default in rows(params):
        meaning = comments.get(path, "").replace("|", "\\|")
        lines.append(f"| `{path}` | {tp} | `{default}` | {meaning} |")
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block``."""
    head, sep, rest = readme.partition(START)
    if not sep or END not in rest:
        raise ValueError(f"the README has no {START} ... {END} block")
    return f"{head}{START}\n{block}\n{END}{rest.split(END, 1)[1]}"


def main() -> None:
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    params = Path(sys.argv[2] if len(sys.argv) > 2 else "params.yaml")
    readme.write_text(replace_block(readme.read_text(), markdown(params.read_text())))
    print(f"updated the params reference in {readme}")


if __name__ == "__main__":
    main()
