"""Readers: JSONL(.gz), JSON arrays, CSV, Parquet, Hugging Face `datasets` (saved folder or Hub name), lists.

    result = read_records("pairs.jsonl.gz")            # format detected from the first row's fields
    result = read_records("prefs.csv", keys={"chosen": "better", "rejected": "worse"})   # other column names
    result.kind                                        # "pairs" | "groups" | "ratings"
    print(result.report.summary())                     # read / kept / dropped by reason, with examples

Every record keeps ``source``: ``"file:line"`` (1-based line) for JSONL, ``"name[row]"`` (0-based row) for JSON
arrays, CSV, Parquet, `datasets` and lists. ``keys`` maps raw_rm's field names (``FIELD_KEYS``) to the names a data
set uses, as OpenRLHF's ``--prompt_key/--chosen_key/--rejected_key`` do; errors then name the data set's field. Bad input raises ``DataError`` naming that place, the field, what was expected and what was
found. Degenerate records (chosen == rejected, an empty response, a group of fewer than two responses, a group
whose ranks are all tied) are counted per reason, logged, and dropped; ``strict=True`` raises on the first.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raw_rm.data.formats import (
    FIELD_KEYS,
    FORMATS,
    KIND_OF_FORMAT,
    PARSERS,
    DataError,
    Degenerate,
    detect_format,
    type_name,
)

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 3  # example sources kept per drop reason
DEGENERATE_REASONS = {
    "chosen_equals_rejected": "chosen == rejected",
    "empty_response": "an empty response",
    "group_too_small": "a group of fewer than 2 responses",
    "all_tied": "a group whose ranks are all tied",
}


@dataclass
class LoadReport:
    """What a load read, kept and dropped (per reason, with up to 3 example sources each)."""

    n_read: int = 0
    n_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""  # what was read
    format: str = ""  # the format used (detected or given)
    kind: str = ""  # "pairs" | "groups" | "ratings"
    notes: dict[str, int] = field(default_factory=dict)  # kept records that needed care (e.g. hh_last_turns_differ)
    bayes_accuracy: dict[str, float] = field(default_factory=dict)  # synthetic data only: {"all", "train", "val"}
    n_train: int = 0  # set by load_train_val: records on each side of the split
    n_val: int = 0
    eval_report: LoadReport | None = None  # load_train_val with data.eval_path: the report of that file

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(where)

    def summary(self) -> str:
        """One line, e.g. ``pairs.jsonl (hh, pairs): read 1535, kept 1533, dropped 2 (empty_response: 2 e.g. ...)``."""
        head = f"{self.source} ({self.format}, {self.kind}): read {self.n_read}, kept {self.n_kept}"
        n_dropped = sum(self.dropped.values())
        if n_dropped:
            parts = [f"{r}: {n} e.g. {', '.join(self.examples.get(r, []))}" for r, n in sorted(self.dropped.items())]
            head += f", dropped {n_dropped} ({'; '.join(parts)})"
        else:
            head += ", dropped 0"
        if self.notes:
            head += "; notes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))
        if self.n_train or self.n_val:
            head += f"; {self.n_train} train / {self.n_val} val"
        if self.bayes_accuracy:
            head += "; Bayes accuracy " + ", ".join(f"{k} {v:.4f}" for k, v in self.bayes_accuracy.items())
        return head


@dataclass
class LoadResult:
    records: list
    kind: Literal["pairs", "groups", "ratings"]
    report: LoadReport


# --------------------------------------------------------------------------------------------- rows
def _jsonl_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{name}:{lineno}"
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type_name(row)}")
                yield where, row
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # bad gzip, unreadable file, not UTF-8
        raise DataError(f"{name}: cannot read ({exc})") from exc


def _table_rows(rows: Any, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a columnar source; None values (absent in that row) are dropped so they read as missing fields."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{name}[{i}]: expected a mapping, got {type_name(row)}")
        yield f"{name}[{i}]", {k: v for k, v in row.items() if v is not None}


def _json_array_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A ``.json`` file: a JSON array of objects, or JSON lines under a .json name (as some hubs ship them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read ({exc})") from exc
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(path, name)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    yield from _table_rows(rows, name)


def _csv_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A CSV file with a header row; numeric columns are read as numbers (pyarrow's type inference)."""
    import pyarrow.csv as pa_csv

    try:
        table = pa_csv.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types; all mean "not a readable CSV file"
        raise DataError(f"{name}: cannot read as CSV with a header row ({exc})") from exc
    yield from _table_rows(table.to_pylist(), name)


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types; all mean "not a readable parquet file"
        raise DataError(f"{name}: cannot read as Parquet ({exc})") from exc
    yield from _table_rows(table.to_pylist(), name)


def _pick_split(dataset: Any, name: str, split: str | None) -> Any:
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = list(dataset)
        if split is None:
            split = "train" if "train" in splits else splits[0]
            if len(splits) > 1:
                logger.info("%s: using split %r of %s (name one with NAME:SPLIT)", name, split, splits)
        if split not in splits:
            raise DataError(f"{name}: no split {split!r}; known: {', '.join(splits)}")
        return dataset[split]
    return dataset


def _disk_rows(path: Path, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError or its own errors
        raise DataError(f"{name}: not a dataset saved with `datasets.save_to_disk` ({exc})") from exc
    yield from _table_rows(_pick_split(dataset, name, None), name)


def _hub_rows(source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    repo, _, split = source.partition(":")
    try:
        dataset = datasets.load_dataset(repo, split=split or None)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, auth: all reported the same way
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)" if offline else ""
        raise DataError(
            f"{source}: not a local file or folder, and loading it from the Hugging Face Hub failed{hint}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    yield from _table_rows(_pick_split(dataset, repo, split or None), repo)


def _looks_like_path(source: str) -> bool:
    suffixes = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet", ".gz")
    return source.endswith(suffixes) or source.startswith(("/", ".", "~"))


def iter_rows(source: str | os.PathLike | list) -> tuple[str, Iterator[tuple[str, dict[str, Any]]]]:
    """(display name, iterator of (where, row)) for any supported source."""
    if isinstance(source, list):
        return "<records>", _table_rows(source, "<records>")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return text, _disk_rows(path, text)
    if path.is_file():
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return text, _jsonl_rows(path, text)
        if path.name.endswith(".json"):
            return text, _json_array_rows(path, text)
        if path.name.endswith(".csv"):
            return text, _csv_rows(path, text)
        if path.name.endswith(".parquet"):
            return text, _parquet_rows(path, text)
        raise DataError(
            f"{text}: unknown file type: expected .jsonl, .jsonl.gz, .json, .csv, .parquet, a `datasets.save_to_disk` "
            "folder or a Hugging Face Hub name"
        )
    if _looks_like_path(text):
        raise DataError(f"{text}: no such file")
    return text, _hub_rows(text)


# -------------------------------------------------------------------------------------------- read
def read_records(
    source: str | os.PathLike | list[dict[str, Any]],
    *,
    format: str = "auto",  # noqa: A002 - the contract's name; matches DataConfig.format
    strict: bool = False,
    limit: int | None = None,
    tokenizer: Any = None,
    keys: dict[str, str] | None = None,
) -> LoadResult:
    """Read preference records from a file, folder, Hub name or list of dicts.

    Args:
        source: .jsonl / .jsonl.gz / .json / .csv / .parquet path, a `datasets.save_to_disk` folder, a Hub name
            (optionally ``NAME:SPLIT``), or a list of dicts.
        format: "auto" (detected from the first row's fields) or one of ``FORMATS``.
        strict: raise ``DataError`` on the first degenerate record instead of dropping and counting it.
        limit: read at most this many rows.
        tokenizer: renders conversations with its chat template when it has one.
        keys: raw_rm field name -> the source's field name, e.g. ``{"chosen": "better"}`` (``FIELD_KEYS``).

    Raises:
        DataError: ``where: field "name": expected ..., got ...``; empty sources; unknown formats; a ``keys``
            field that the first row does not have.
    """
    if format != "auto" and format not in FORMATS:
        raise DataError(f'format "{format}": unknown; known: auto, {", ".join(FORMATS)}')
    renames = _check_keys(keys)
    if limit is not None and limit < 1:
        raise DataError(f"limit: expected a positive integer or None, got {limit}")
    name, rows = iter_rows(source)
    report = LoadReport(source=name, format=format)
    records: list[Any] = []
    parser = None
    for where, row in rows:
        if limit is not None and report.n_read >= limit:
            break
        if renames:
            row = _renamed(row, renames, where, first=parser is None)
        try:
            if parser is None:
                report.format = detect_format(row, where) if format == "auto" else format
                parser = PARSERS[report.format]
            report.n_read += 1
            records.append(parser(row, where, tokenizer, report.notes))
        except DataError as exc:
            if not renames:
                raise
            raise DataError(_source_field_names(str(exc), renames)) from None
        except Degenerate as exc:
            if strict:
                raise DataError(
                    f"{where}: degenerate record: {DEGENERATE_REASONS[exc.reason]} ({exc.reason}); "
                    "strict=True makes this an error (data.strict=false drops and counts such records)"
                ) from None
            report.drop(exc.reason, where)
    if report.n_read == 0:
        raise DataError(f"{name}: empty file: no records")
    report.kind = KIND_OF_FORMAT[report.format]
    report.n_kept = len(records)
    if not records:
        raise DataError(f"{name}: no usable records: {report.summary()}")
    log = logger.warning if report.dropped else logger.info
    log("loaded %s", report.summary())
    return LoadResult(records, report.kind, report)


# ------------------------------------------------------------------------------------- field names
def _check_keys(keys: dict[str, str] | None) -> dict[str, str]:
    """The non-identity entries of ``keys`` (raw_rm name -> source name), checked."""
    renames = {k: v for k, v in (keys or {}).items() if k != v}
    unknown = sorted(set(renames) - set(FIELD_KEYS))
    if unknown:
        raise DataError(f"keys: unknown raw_rm field(s) {unknown}; known: {', '.join(FIELD_KEYS)}")
    targets = list(renames.values())
    clashes = sorted({t for t in targets if targets.count(t) > 1})
    if clashes:
        raise DataError(f"keys: source field(s) {clashes} mapped to more than one raw_rm field")
    return renames


def _renamed(row: dict[str, Any], renames: dict[str, str], where: str, *, first: bool) -> dict[str, Any]:
    """``row`` with the source's field names replaced by raw_rm's; the first row must hold every renamed field."""
    if first:
        missing = [f"data.{k}_key={v!r}" for k, v in renames.items() if v not in row]
        if missing:
            raise DataError(f"{where}: {', '.join(missing)}: no such field in the row (fields: {sorted(row)})")
    sources = set(renames.values())
    # A raw_rm-named field that a rename replaces is dropped, as is the source name (it now goes by raw_rm's).
    out = {k: v for k, v in row.items() if k not in renames and k not in sources}
    for name, source_name in renames.items():
        if source_name in row:
            out[name] = row[source_name]
    return out


def _source_field_names(message: str, renames: dict[str, str]) -> str:
    """An error message with raw_rm's field names replaced by the source's (``field "better" (data.chosen_key)``)."""
    for name, source_name in renames.items():
        message = message.replace(f'field "{name}"', f'field "{source_name}" (data.{name}_key)')
    return message
