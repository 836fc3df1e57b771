"""JSONL input/output for the CLI commands (score, rank, select, drift): line-numbered errors, '-' = stdin/stdout."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO


class InputError(ValueError):
    """A bad input file or row; the message names file:line, the field and what was expected."""


def open_text(path: str) -> TextIO:
    """``path`` opened for reading text ("-" = stdin, ``.gz`` = gzip)."""
    if path == "-":
        return sys.stdin
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    return open(p, encoding="utf-8")


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSONL to ``path`` ("-" = stdout, ``.gz`` = gzip) and return how many were written.

    A file is written to a temporary file in the same folder (parent folders created) and renamed over ``path``
    only once every row is written, so an error half way (a bad row, a failed forward pass) leaves an existing
    ``path`` untouched and no partial file behind. ``rows`` may be a generator: rows are written as they come.
    """
    if path == "-":
        n = 0
        try:
            for n, row in enumerate(rows, start=1):  # noqa: B007 - n is the count written, read after the loop
                sys.stdout.write(json.dumps(row) + "\n")
        finally:
            sys.stdout.flush()
        return n
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            binary = gzip.GzipFile(filename=target.name[:-3], mode="wb", fileobj=raw) if target.suffix == ".gz" else raw
            with io.TextIOWrapper(binary, encoding="utf-8") as handle:
                n = 0
                for n, row in enumerate(rows, start=1):  # noqa: B007 - n is the count written, read after the loop
                    handle.write(json.dumps(row) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s usual mode
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
