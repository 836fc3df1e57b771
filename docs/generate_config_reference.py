"""Generate docs/config.md from the config dataclasses: each field's type, default and its one comment.

python docs/generate_config_reference.py          # rewrite docs/config.md
python docs/generate_config_reference.py --check  # exit 1 if docs/config.md is stale (a test runs this)
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import typing
from pathlib import Path

from raw_rm import config as config_module

OUT = Path(__file__).with_name("config.md")
ROOTS = ["Config", "ServeConfig"]


def _field_comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment on that field's statement in config.py.

    The comment trails the field's line, or a line of the statement when the formatter wrapped a long one.
    """
    source = Path(config_module.__file__).read_text()
    lines = source.splitlines()
    comments: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    found = [ln for ln in lines[stmt.lineno - 1 : stmt.end_lineno] if "  # " in ln]
                    if found:
                        comments[(node.name, stmt.target.id)] = found[0].split("  # ", 1)[1].strip()
    return comments


def _type_name(tp: object) -> str:
    text = str(tp).replace("typing.", "")
    return getattr(tp, "__name__", text) if not typing.get_args(tp) else text


def _rows(cls: type, prefix: str, comments: dict[tuple[str, str], str]) -> list[str]:
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, f"{prefix}{f.name}.", comments)
            continue
        value = getattr(default, f.name)
        doc = comments.get((cls.__name__, f.name), "")
        type_text = _type_name(tp).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | `{type_text}` | `{value!r}` | {doc.replace('|', '/')} |")
    return rows


def render() -> str:
    comments = _field_comments()
    parts = [
        "# Configuration reference",
        "",
        "Generated from `raw_rm/config.py` by `python docs/generate_config_reference.py`; do not edit by hand.",
        "Precedence: defaults < YAML (`--config FILE`) < `key.sub=value` overrides on the command line.",
        "",
    ]
    for name in ROOTS:
        root = getattr(config_module, name, None)
        if root is None:
            continue
        parts += [f"## `{name}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        parts += _rows(root, "", comments)
        parts.append("")
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python docs/generate_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
