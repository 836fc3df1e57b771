"""JSONL input/output for the scoring commands (score, rank): line-numbered errors, '-' = stdin/stdout."""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


class InputError(ValueError):
    """A bad input file or row; the message names file:line, the field and what was expected."""


def open_text(path: str, mode: str = "r") -> TextIO:
    if path == "-":
        return sys.stdin if "r" in mode else sys.stdout
    p = Path(path)
    if "r" in mode and not p.exists():
        raise InputError(f"{path}: no such file")
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, mode.replace("t", "") + "b"), encoding="utf-8")
    if "w" in mode:
        p.parent.mkdir(parents=True, exist_ok=True)
    return open(p, mode, encoding="utf-8")


def read_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, row) for every non-blank line; a line that is not a JSON object raises InputError."""
    name = "<stdin>" if path == "-" else Path(path).name
    handle = open_text(path)
    try:
        for n, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{name}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row
    finally:
        if handle is not sys.stdin:
            handle.close()


def require_str(row: dict[str, Any], field: str, where: str) -> str:
    if field not in row:
        raise InputError(f'{where}: missing field "{field}" (fields present: {", ".join(sorted(row)) or "none"})')
    value = row[field]
    if not isinstance(value, str):
        raise InputError(f'{where}: field "{field}": expected a string, got {type(value).__name__}')
    return value


def show_progress() -> bool:
    return sys.stderr.isatty()
