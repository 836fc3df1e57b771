"""The one evaluation that gates promotion, and the one calibration split every evaluation uses (core, no MLflow).

    report = evaluate_for_gate(cfg, "runs/latest/model", report_dir="runs/latest/eval_report")
    report.flat_metrics()["accuracy"], report.flat_metrics()["ece"]   # what the promotion gate reads

Three callers, one function: the promotion gate after training (``raw_rm.tracking.registry``), `raw-rm eval`
(``raw_rm.cli.eval``) and the registration of Tune's best trial (``raw_rm.tracking.tune``) all call
:func:`evaluate_sets`, with ``cfg.eval`` deciding the calibration split (``eval.calibration_fraction``,
``eval.calibration_salt``), the bootstrap (``eval.n_boot``) and the OOD sets (``eval.ood``). So the gate and
`raw-rm eval --heldout` on the training file fit the temperature T on the same pairs and report the same T.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from raw_rm.config import Config, EvalConfig
from raw_rm.data import load_train_val
from raw_rm.data.readers import read_records
from raw_rm.data.records import PreferencePair
from raw_rm.data.splits import split_by_prompt
from raw_rm.eval.evaluator import RewardModelEvaluator
from raw_rm.eval.report import EvalReport
from raw_rm.quantization import load_for_inference

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIN_GATE_PAIRS = 4  # fewer validation pairs than this: no gate evaluation (the gate reads val_* training metrics)
MIN_SIDE_PAIRS = 2  # pairs each side of the calibration split needs: T from one pair is meaningless


def calibration_split(records: Sequence[T], ec: EvalConfig) -> tuple[list[T], list[T]]:
    """(measured, calibration): a record fits T when its prompt's hash with ``eval.calibration_salt`` falls below
    ``eval.calibration_fraction``; every record of one prompt lands on the same side. The only place the
    calibration pairs are chosen."""
    return split_by_prompt(records, ec.calibration_fraction, ec.calibration_salt)


def load_eval_sets(source: str, cfg: Config, tokenizer: Any = None, *, heldout: bool = False) -> dict[str, list[Any]]:
    """Read an evaluation file with ``cfg.data``'s format options, sorted into ``pairs``/``groups``/``ratings``.

    With ``heldout`` only the prompts training held out from this file are kept (``data.val_fraction``,
    ``data.split_seed``: the split ``raw_rm.data.load_train_val`` makes).

    Raises:
        ValueError: the file (or its held-out split) holds no preference pairs; the message carries the loader's report.
    """
    # raw_rm.eval is imported inside functions: its __init__ imports this module (to re-export the gate), so a
    # module-level import here would find the package half-initialised
    from raw_rm.eval import as_eval_sets

    loaded = read_records(
        source, format=cfg.data.format, strict=cfg.data.strict, limit=cfg.data.limit, tokenizer=tokenizer
    )
    records = loaded.records
    if heldout:
        _, records = split_by_prompt(records, cfg.data.val_fraction, cfg.data.split_seed)
        if not records:
            raise ValueError(
                f"{source}: --heldout: no record falls in the validation split "
                f"(data.val_fraction={cfg.data.val_fraction})"
            )
    sets = as_eval_sets(records)
    if not sets["pairs"]:
        raise ValueError(f"{source}: no preference pairs in the data ({loaded.report.summary()})")
    return sets


def evaluate_sets(
    inference: Any,
    sets: dict[str, list[Any]],
    ec: EvalConfig,
    *,
    name: str,
    calibration: Sequence[PreferencePair] | None = None,
    ood: dict[str, Sequence[PreferencePair]] | None = None,
    small_split: Literal["error", "fit_on_evaluated"] = "error",
    seed: int = 0,
    progress: bool = False,
    run_probes: bool = True,
    save_temperature: bool = False,
    model_info: dict[str, Any] | None = None,
) -> EvalReport:
    """Evaluate ``sets`` (``as_eval_sets`` output) with T fitted on their calibration split, plus ``eval.ood``.

    Args:
        inference: the scorer (``RewardModelInference`` or anything with ``batch_predict``).
        sets: ``{"pairs": [...], "groups": [...], "ratings": [...]}``; pairs, groups and ratings of the
            calibration prompts are left out of the evaluation.
        ec: ``cfg.eval``. ``calibration_fraction`` 0 fits nothing (the model's stored T is used).
        name: the main set's name in the report.
        calibration: pairs to fit T on instead of the split (`raw-rm eval --calibrate-on`).
        ood: OOD sets already read (name -> pairs); ``eval.ood`` names read by the caller go here.
        small_split: a split leaving fewer than ``MIN_SIDE_PAIRS`` pairs on a side raises ValueError ("error"), or
            fits T on the evaluated pairs themselves, logged ("fit_on_evaluated": the gate on tiny data).
        seed, progress, run_probes, save_temperature, model_info: as ``RewardModelEvaluator.run``.

    Raises:
        ValueError: a small split with ``small_split="error"``, or an OOD set named like the main set.
    """

    measured = sets
    if calibration is None and ec.calibration_fraction > 0:
        measured = {kind: calibration_split(records, ec)[0] for kind, records in sets.items()}
        calibration = calibration_split(sets["pairs"], ec)[1]
        if min(len(measured["pairs"]), len(calibration)) < MIN_SIDE_PAIRS:
            problem = (
                f"eval.calibration_fraction={ec.calibration_fraction}: the split of {len(sets['pairs'])} pairs "
                f"left {len(measured['pairs'])} to evaluate and {len(calibration)} to fit T"
            )
            if small_split == "error":
                raise ValueError(f"{problem}; give more data, another fraction or separate calibration pairs")
            logger.warning("%s: fitting T on the evaluated pairs themselves", problem)
            measured, calibration = sets, sets["pairs"]
    evaluator = RewardModelEvaluator(inference, n_boot=ec.n_boot, progress=progress, seed=seed)
    return evaluator.run(
        measured["pairs"],
        name=name,
        val_pairs=calibration,
        ood=dict(ood or {}),
        groups=measured.get("groups") or None,
        ratings=measured.get("ratings") or None,
        run_probes=run_probes,
        save_temperature=save_temperature,
        model_info=model_info,
    )


def evaluate_for_gate(
    cfg: Config,
    model_dir: str | Path,
    *,
    report_dir: str | Path | None = None,
    save_temperature: bool = True,
    progress: bool = False,
) -> EvalReport | None:
    """Evaluate a trained model on its validation data (``cfg.data``) and ``eval.ood``, as the promotion gate needs.

    T is fitted on the calibration split of the validation prompts and, when its cross-fitted NLL beats the model's
    current temperature (``RewardModelEvaluator.fit_calibration``), saved into the model folder's metadata
    (``save_temperature``), so the model logged and registered afterwards carries it; everything else is measured
    on the other prompts. With ``report_dir`` the report folder is written there.

    Returns:
        The report (``flat_metrics()`` holds ``accuracy``, ``ece`` after T and ``temperature``), or None with fewer
        than ``MIN_GATE_PAIRS`` validation pairs (logged).
    """
    from raw_rm.eval import as_eval_sets, model_info

    inference = load_for_inference(model_dir, max_len_tokens=cfg.data.max_len_tokens)
    _, val_records, _ = load_train_val(cfg, tokenizer=inference.tokenizer)
    sets = as_eval_sets(val_records)
    if len(sets["pairs"]) < MIN_GATE_PAIRS:
        logger.warning(
            "only %d validation pairs: no gate evaluation; the gate will read val_* training metrics",
            len(sets["pairs"]),
        )
        return None
    ood = {name: load_eval_sets(path, cfg, inference.tokenizer)["pairs"] for name, path in cfg.eval.ood.items()}
    report = evaluate_sets(
        inference,
        sets,
        cfg.eval,
        name="validation",
        ood=ood,
        small_split="fit_on_evaluated",
        seed=cfg.train.seed,
        progress=progress,
        save_temperature=save_temperature,
        model_info={**model_info(inference), "model_dir": str(model_dir)},
    )
    if report_dir is not None:
        report.write(report_dir)
    return report


def write_gate_report(cfg: Config, model_dir: Path, report_dir: Path) -> dict[str, float]:
    """:func:`evaluate_for_gate` writing its report to ``report_dir``; the flat metrics the gate reads ({} when
    there was too little validation data). The registry's default ``evaluate_fn``."""
    report = evaluate_for_gate(cfg, model_dir, report_dir=report_dir)
    return report.flat_metrics() if report is not None else {}
