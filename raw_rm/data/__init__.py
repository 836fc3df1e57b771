"""Human preference data: records, readers, formats, splits, the synthetic default and batching.

train, val, report = load_train_val(cfg, tokenizer)   # synthetic default when cfg.data.train_path is None
print(report.summary())
"""

from __future__ import annotations

import logging
from typing import Any

from raw_rm.config import Config
from raw_rm.data import synthetic
from raw_rm.data.formats import (
    FIELD_KEYS,
    DataError,
    group_to_pairs,
    pairs_to_groups,
    ratings_to_groups,
    ratings_to_pairs,
    render_messages,
    split_hh_dialogue,
)
from raw_rm.data.readers import LoadReport, LoadResult, read_records
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.data.splits import split_by_prompt
from raw_rm.data.synthetic import bayes_accuracy

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "LoadReport",
    "LoadResult",
    "PreferencePair",
    "RankedGroup",
    "RatedResponse",
    "convert_kind",
    "group_to_pairs",
    "load_records",
    "load_train_val",
    "ratings_to_pairs",
    "read_records",
    "render_messages",
    "split_by_prompt",
    "split_hh_dialogue",
]


def convert_kind(records: list, from_kind: str, to_kind: str, *, aspect: str | None = None, source: str = "") -> list:
    """Records of ``from_kind`` as ``to_kind``: groups -> all strictly ordered pairs, ratings -> pairs or groups of
    the same prompt by ``aspect`` (None = mean of aspects), pairs -> groups of two.

    Raises:
        DataError: ratings cannot be made from pairs or groups, or the conversion leaves nothing.
    """
    if from_kind == to_kind:
        return records
    if to_kind == "pairs" and from_kind == "groups":
        out = [pair for group in records for pair in group_to_pairs(group)]
    elif to_kind == "pairs" and from_kind == "ratings":
        out = ratings_to_pairs(records, aspect)
    elif to_kind == "groups" and from_kind == "pairs":
        out = pairs_to_groups(records)
    elif to_kind == "groups" and from_kind == "ratings":
        out = ratings_to_groups(records, aspect)
    else:
        raise DataError(
            f"{source}: data.kind={to_kind}: cannot make {to_kind} from {from_kind} (per-aspect ratings need "
            "rated data); use data.kind=pairs or data.kind=groups"
        )
    if not out:
        raise DataError(
            f"{source}: converting {len(records)} {from_kind} to {to_kind} gave none (no two responses differ)"
        )
    logger.info("%s: %d %s became %d %s", source, len(records), from_kind, len(out), to_kind)
    return out


def data_keys(dc: Any) -> dict[str, str]:
    """``data.<field>_key`` settings as ``read_records``'s ``keys`` (raw_rm field -> the data set's field)."""
    return {name: getattr(dc, f"{name}_key") for name in FIELD_KEYS}


def load_records(path: str, cfg: Config, tokenizer: Any = None) -> tuple[list, LoadReport]:
    """Read ``path`` with ``cfg.data``'s format/strict/limit and convert to ``cfg.data.kind``."""
    dc = cfg.data
    result = read_records(
        path, format=dc.format, strict=dc.strict, limit=dc.limit, tokenizer=tokenizer, keys=data_keys(dc)
    )
    records = convert_kind(result.records, result.kind, dc.kind, aspect=dc.aspect, source=result.report.source)
    return records, result.report


def _synthetic(cfg: Config) -> tuple[list, LoadReport, Any]:
    data = synthetic.generate(cfg.data.synthetic)
    records = {"pairs": data.pairs, "groups": data.groups, "ratings": data.ratings}[cfg.data.kind]
    if cfg.data.limit is not None:
        records = records[: cfg.data.limit]
    report = LoadReport(
        n_read=len(records),
        n_kept=len(records),
        source=f"synthetic(seed={cfg.data.synthetic.seed})",
        format="synthetic",
        kind=cfg.data.kind,
    )
    return records, report, data


def load_train_val(cfg: Config, tokenizer: Any = None) -> tuple[list, list, LoadReport]:
    """(train records, validation records, report) for ``cfg.data``.

    ``train_path`` None: the synthetic default (``cfg.data.synthetic``), whose report carries the Bayes accuracy
    of all / train / val pairs. ``eval_path`` None: a split of the training data by prompt hash
    (``val_fraction``, salt ``split_seed``), so no prompt is on both sides. The tokenizer renders conversations
    with its chat template when it has one.
    """
    dc = cfg.data
    data = None
    if dc.train_path is None:
        records, report, data = _synthetic(cfg)
    else:
        records, report = load_records(dc.train_path, cfg, tokenizer)
    if dc.eval_path is None:
        train, val = split_by_prompt(records, dc.val_fraction, dc.split_seed)
    else:
        train = records
        val, eval_report = load_records(dc.eval_path, cfg, tokenizer)
        report.eval_report = eval_report
    report.n_train, report.n_val = len(train), len(val)
    if data is not None and dc.kind == "pairs":
        noise = dc.synthetic.noise
        report.bayes_accuracy = {"all": data.bayes_accuracy}
        report.bayes_accuracy.update(
            {name: bayes_accuracy(part, noise) for name, part in (("train", train), ("val", val)) if part}
        )
    if not train:
        raise DataError(f"{report.source}: no training records left after the train/validation split")
    logger.info("data: %d train / %d val %s (%s)", len(train), len(val), dc.kind, report.summary())
    return train, val, report
