"""Train an ensemble of reward models saved as ONE model folder (edge: Ray Tune; registered by tracking/ensemble.py).

    result = train_ensemble(load_config(None, ["ensemble.members=3", "ensemble.bootstrap=true"]))
    result.ensemble_dir     # <train.output_dir>/ensemble: load_model / RewardModelInference / serve open it

Members come from one of three recipes (``cfg.ensemble``):

- seeds (default): K copies of the config with ``train.seed`` = seed, seed + 1, ..., seed + K − 1;
- bootstrap (``ensemble.bootstrap=true``): as above, and member k trains on its own resample (with
  replacement, same size) of the training records, drawn from the member's seed;
- Tune (``ensemble.from_tune=EXPERIMENT_DIR``): the configs of the K best completed trials of a
  ``raw-rm tune`` experiment (``raw_rm.tune.results.top_k_configs``), a more diverse ensemble.

The cheap option is ``model.arch=multihead``: ONE shared-trunk model with ``model.num_heads = ensemble.members``
heads (``ensemble.bootstrap`` gives each head its Poisson(1) bootstrap weights), trained once; its spread
underestimates an independent ensemble's but costs one training. It is packaged as an ensemble folder with one
member, so registration and serving are the same.

How members run: with ``parallel=True`` (the default when ``ray.address`` is set or Ray is running) each member
is one trial of a Ray Tune *function trainable* that runs the same recipe (``raw_rm.train.recipe``) with
``tune.cpus_per_trial`` CPUs, at most ``tune.max_concurrent`` at once. Why Tune trials and not Ray Train runs
(ray 2.60, docs/development.md): Train V2 refuses ``Tuner(TorchTrainer)``, and separate ``TorchTrainer.fit()`` calls run
one after another, so K members would take K times as long even with free CPUs. A member needs no data
parallelism at these sizes; a trial per member gets the members trained side by side with per-trial resources,
and Tune records each member's metrics and final model as a checkpoint (copied out by the driver, so it also
works when trials ran on other nodes). Without Ray (``parallel=False``) members train one after another here.

After training, :func:`member_comparison` scores the ensemble against each member on the validation pairs (each
contender at its own temperature fitted on the calibration split, ``raw_rm.eval.gate.calibration_split``, measured
on the other prompts); it is logged, kept in
``ensemble.json`` (``validation_comparison``), printed by ``raw-rm ensemble`` and logged to MLflow as
``val_cmp_*`` metrics.

Registration (the caller's step when ``cfg.mlflow.enabled``): ``raw_rm.tracking.ensemble.register_ensemble``, one MLflow run for the
ensemble with one child run per member, the ensemble folder evaluated for the gate and registered as ONE version
with alias ``candidate``; ``models:/NAME@candidate`` serves it with one URI.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raw_rm import metrics as M
from raw_rm.config import Config, EvalConfig, apply_overrides, config_from_dict
from raw_rm.data import load_train_val
from raw_rm.data.formats import group_to_pairs
from raw_rm.eval.gate import calibration_split
from raw_rm.inference import RewardModelInference
from raw_rm.models import load_model, save_model
from raw_rm.models.backbones import load_tokenizer
from raw_rm.models.ensemble import save_ensemble
from raw_rm.reference import fit_reference
from raw_rm.train.recipe import run_recipe
from raw_rm.tune.results import top_k_configs

logger = logging.getLogger(__name__)

MEMBER_SUMMARY_KEYS = ("arch", "backbone", "loss", "lr", "epochs", "seed", "bootstrap")


@dataclass
class EnsembleResult:
    """What ``train_ensemble`` returns."""

    ensemble_dir: str  # the ensemble folder (ensemble.json + member_i/)
    members: list[dict[str, Any]]  # per member: dir, seed, config summary, metrics, trial id
    metrics: dict[str, float] = field(default_factory=dict)  # evaluation metrics of the ensemble (when evaluated)
    mlflow_run_id: str | None = None
    model_version: str | None = None  # registered version (None when not registered)
    validation_comparison: dict[str, Any] | None = None  # the ensemble vs each member on validation (member_comparison)


# ------------------------------------------------------------------------------------ member recipes
def member_configs(cfg: Config) -> list[Config]:
    """One config per member (see the module doc); each trains into ``<output_dir>/members/member_i``."""
    k = cfg.ensemble.members
    if k < 1:
        raise ValueError(f"ensemble.members: expected >= 1, got {k}")
    if cfg.ensemble.from_tune:
        bases = top_k_configs(cfg.ensemble.from_tune, k)
    else:
        bases = [apply_overrides(cfg, {"train.seed": cfg.train.seed + i}) for i in range(k)]
    out = Path(cfg.train.output_dir)
    return [
        apply_overrides(
            base,
            {
                "train.output_dir": str(out / "members" / f"member_{i}"),
                "train.resume": False,
                "mlflow.enabled": False,
                "ensemble.bootstrap": cfg.ensemble.bootstrap,
            },
        )
        for i, base in enumerate(bases)
    ]


def bootstrap_resample(records: Sequence[Any], seed: int) -> list[Any]:
    """A same-size resample with replacement of ``records``, drawn from ``seed`` (deterministic)."""
    rng = random.Random(f"bootstrap/{seed}")
    n = len(records)
    return [records[rng.randrange(n)] for _ in range(n)]


def config_summary(cfg: Config) -> dict[str, Any]:
    """The few settings that tell members apart (for ensemble.json and registry tags)."""
    return {
        "arch": cfg.model.arch,
        "backbone": cfg.model.backbone,
        "loss": cfg.loss.name,
        "lr": cfg.train.lr,
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "bootstrap": cfg.ensemble.bootstrap,
    }


def train_member(
    cfg: Config, *, records: tuple[Sequence[Any], Sequence[Any]] | None = None
) -> tuple[str, dict[str, float]]:
    """Train one member with THE recipe (``raw_rm.train.recipe.run_recipe``); returns (model folder, final metrics).

    With ``cfg.ensemble.bootstrap`` the training records are replaced by a resample drawn from ``train.seed``.
    """

    if records is None:
        train, val, _ = load_train_val(cfg, tokenizer=load_tokenizer(cfg.model.backbone))
    else:
        train, val = records
    if cfg.ensemble.bootstrap:
        train = bootstrap_resample(train, cfg.train.seed)
    run = run_recipe(cfg, records=(train, val))
    return str(run.model_dir), dict(run.metrics)


# -------------------------------------------------------------------------------------------- driver
def train_ensemble(cfg: Config, *, parallel: bool | None = None) -> EnsembleResult:
    """Train ``cfg.ensemble.members`` members and save them as one ensemble folder (see module doc).

    Args:
        cfg: the base config (``ensemble.*`` picks the recipe; ``tune.cpus_per_trial``/``max_concurrent`` the
            parallelism; ``mlflow.*`` the registration).
        parallel: members as Ray Tune trials (True), one after another in this process (False), or None: Tune
            when Ray is already running or ``ray.address`` is set.

    Returns:
        An EnsembleResult; ``ensemble_dir`` is ``<train.output_dir>/ensemble``.
    """

    out = Path(cfg.train.output_dir).resolve()
    cfg = apply_overrides(cfg, {"train.output_dir": str(out)})
    ens_dir = out / "ensemble"
    started = time.perf_counter()
    if cfg.model.arch == "multihead":
        members = _train_multihead(cfg)
    else:
        configs = member_configs(cfg)
        if parallel is None:
            parallel = bool(cfg.ray.address) or _ray_running()
        members = _train_with_tune(cfg, configs) if parallel else _train_sequential(cfg, configs)
    if ens_dir.exists():
        shutil.rmtree(ens_dir)
    save_ensemble(ens_dir, [m.pop("model_dir") for m in members], {"members": members})
    metadata, comparison = _fit_ensemble_metadata(cfg, ens_dir)
    logger.info(
        "ensemble of %d members in %.0f s -> %s (temperature %.3f on validation)",
        len(members),
        time.perf_counter() - started,
        ens_dir,
        metadata.temperature,
    )
    if comparison is None:
        record = json.loads((ens_dir / "ensemble.json").read_text())
    else:  # kept in ensemble.json, so that the registered folder carries it
        record = edit_ensemble_json(ens_dir, lambda r: r.update(validation_comparison=comparison))
    return EnsembleResult(ensemble_dir=str(ens_dir), members=record["members"], validation_comparison=comparison)


def _ray_running() -> bool:
    # Ray (seconds to import) is imported inside the functions that use it: with parallel=False members train without it
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _train_multihead(cfg: Config) -> list[dict[str, Any]]:
    """The cheap option: one shared-trunk model with ``ensemble.members`` heads."""
    member_cfg = apply_overrides(
        cfg,
        {
            "model.num_heads": cfg.ensemble.members,
            "model.bootstrap": cfg.ensemble.bootstrap,
            "train.output_dir": str(Path(cfg.train.output_dir) / "members" / "multihead"),
            "mlflow.enabled": False,
        },
    )
    model_dir, metrics = train_member(
        apply_overrides(member_cfg, {"ensemble.bootstrap": False})
    )  # heads bootstrap themselves
    return [
        {
            "model_dir": model_dir,
            "seed": cfg.train.seed,
            "heads": cfg.ensemble.members,
            "config": config_summary(member_cfg),
            "metrics": metrics,
        }
    ]


def _train_sequential(cfg: Config, configs: list[Config]) -> list[dict[str, Any]]:
    records = None
    if not cfg.ensemble.from_tune:  # same data for every member: load it once
        train, val, _ = load_train_val(cfg, tokenizer=load_tokenizer(cfg.model.backbone))
        records = (train, val)
    members = []
    for i, member_cfg in enumerate(configs):
        logger.info("ensemble member %d/%d (seed %d)", i + 1, len(configs), member_cfg.train.seed)
        model_dir, metrics = train_member(member_cfg, records=records)
        members.append(
            {
                "model_dir": model_dir,
                "seed": member_cfg.train.seed,
                "config": config_summary(member_cfg),
                "metrics": metrics,
            }
        )
    return members


def run_member_trial(config: dict[str, Any], *, members: list[dict[str, Any]]) -> None:
    """Tune function trainable: train member ``config["index"]`` and report its metrics with its model as the
    trial's checkpoint (the driver copies it out, so trials may run on any node)."""
    from ray import tune

    cfg = config_from_dict(members[config["index"]], source=f"ensemble member {config['index']}")
    scratch = Path(tempfile.mkdtemp(prefix=f"raw_rm_member_{config['index']}_"))
    try:
        cfg = apply_overrides(cfg, {"train.output_dir": str(scratch / "run"), "train.progress": False})
        model_dir, metrics = train_member(cfg)
        final = scratch / "final"
        shutil.copytree(model_dir, final / "model")
        (final / "metrics.json").write_text(json.dumps(metrics))
        tune.report({k: float(v) for k, v in metrics.items()}, checkpoint=tune.Checkpoint.from_directory(str(final)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_with_tune(cfg: Config, configs: list[Config]) -> list[dict[str, Any]]:
    from ray import tune

    from raw_rm.train.ray_train import init_ray

    init_ray(cfg.ray.address)
    per_trial = max(1, int(cfg.tune.cpus_per_trial))
    dicts = [asdict(apply_overrides(c, {"train.num_threads": c.train.num_threads or per_trial})) for c in configs]
    resources = {"cpu": cfg.tune.cpus_per_trial}
    if cfg.tune.gpus_per_trial:
        resources["gpu"] = cfg.tune.gpus_per_trial
    trainable = tune.with_resources(tune.with_parameters(run_member_trial, members=dicts), resources)
    storage = Path(cfg.train.output_dir) / "tune"
    name = f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}"  # unique: reusing a finished run's name reloads it
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(len(configs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures)
        ),
    )
    grid = tuner.fit()
    if grid.num_errors:  # Tuner.fit does not raise for failed trials
        errors = [str(r.error) for r in grid if r.error is not None]
        raise RuntimeError(f"{grid.num_errors} of {len(configs)} ensemble members failed; first error:\n{errors[0]}")
    members: list[dict[str, Any] | None] = [None] * len(configs)
    for result in grid:
        i = int(result.config["index"])
        target = Path(cfg.train.output_dir) / "members" / f"member_{i}"
        if target.exists():
            shutil.rmtree(target)
        result.checkpoint.to_directory(str(target))
        members[i] = {
            "model_dir": str(target / "model"),
            "seed": configs[i].train.seed,
            "config": config_summary(configs[i]),
            "metrics": json.loads((target / "metrics.json").read_text()),
            "trial_id": result.metrics.get("trial_id"),
        }
    return [m for m in members if m is not None]


def _fit_ensemble_metadata(cfg: Config, ens_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """Normalisation and drift references of the ensemble mean (training records), temperature (validation),
    and the ensemble-vs-members comparison on validation (:func:`member_comparison`)."""

    model, tokenizer = load_model(ens_dir)
    train, val, _ = load_train_val(cfg, tokenizer=tokenizer)
    if cfg.data.kind == "groups":
        train = [p for g in train for p in group_to_pairs(g)]
        val = [p for g in val for p in group_to_pairs(g)]
    if cfg.data.kind == "ratings":
        logger.warning("data.kind=ratings: the ensemble keeps default normalisation and no drift reference")
        return model.metadata, None
    fit_reference(model, tokenizer, train, max_len_tokens=cfg.data.max_len_tokens, seed=cfg.train.seed)
    comparison = None
    if val:
        # a cache holding every validation text: member_comparison reads the members' rewards of this one pass
        rm = RewardModelInference(
            model, tokenizer=tokenizer, max_len_tokens=cfg.data.max_len_tokens, cache_size=2 * len(val)
        )
        rewards = rm.batch_predict([p.prompt for p in val] * 2, [p.chosen for p in val] + [p.rejected for p in val])
        model.metadata.temperature = M.fit_temperature(rewards[: len(val)] - rewards[len(val) :])
        comparison = member_comparison(rm, val, cfg.eval)
    save_model(model, tokenizer, ens_dir)
    return model.metadata, comparison


MIN_COMPARISON_PAIRS = 20  # fewer validation pairs than this: no ensemble-vs-members comparison


def member_comparison(rm: Any, val: Sequence[Any], ec: EvalConfig) -> dict[str, Any] | None:
    """The ensemble against each member on validation pairs (``raw_rm.metrics.compare_members``).

    The pairs are split by ``raw_rm.eval.gate.calibration_split`` (``ec`` = ``cfg.eval``), as the gate splits
    them: every contender (each member, and the mean of the members' z-scored rewards that the ensemble serves)
    fits its temperature on the calibration pairs and is measured on the others. None with one member, fewer
    than ``MIN_COMPARISON_PAIRS`` pairs or an empty side. On a few hundred pairs the differences are noisy:
    read them with ``benchmarks/ensemble_vs_single.py``'s intervals before concluding.
    """

    if len(val) < MIN_COMPARISON_PAIRS:
        return None
    measured, fitted = calibration_split(list(val), ec)
    if not measured or not fitted:
        return None

    def deltas(pairs: Sequence[Any]) -> Any:
        m = rm.batch_predict_members(
            [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]
        )
        return m[: len(pairs)] - m[len(pairs) :]

    fit = deltas(fitted)
    if fit.shape[1] < 2:
        return None
    out = M.compare_members(fit, deltas(measured))
    ens, best = out["ensemble"], out["members"][out["best_member"]]
    logger.info(
        "ensemble vs members on %d validation pairs (T fitted on %d others): NLL %.4f vs members %.4f-%.4f "
        "(best member_%d %.4f), ECE %.4f vs %.4f",
        out["n_eval"],
        out["n_fit"],
        ens["nll"],
        min(m["nll"] for m in out["members"]),
        max(m["nll"] for m in out["members"]),
        out["best_member"],
        best["nll"],
        ens["ece"],
        best["ece"],
    )
    return out


def edit_ensemble_json(ens_dir: Path, edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Read ensemble.json, let ``edit`` change the record in place, write it back; returns the record."""
    path = ens_dir / "ensemble.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
