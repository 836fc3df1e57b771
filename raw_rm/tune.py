"""Ray Tune search over losses, temperatures and training settings (edge).

The space is YAML under ``tune.space``: dotted config paths mapped to distribution specs, applied to each
trial's copy of the config as overrides, so every trial runs THE training loop on the one config tree.

    tune:
      space:
        loss.name: {choice: [bt, contrastive, focal]}
        loss.temperature: {loguniform: [0.05, 5], when: {loss.name: contrastive}}
        loss.gamma: {uniform: [0.5, 4]}          # `when` inferred: only losses that read gamma (focal)
        train.lr: {loguniform: [1.0e-5, 3.0e-4]}

Specs: ``choice: [...]``, ``grid: [...]`` (random searcher only), ``uniform: [low, high]``,
``loguniform: [low, high]`` (low > 0), ``randint: [low, high]`` (high exclusive), each with an optional
``when: {path: value | [values]}`` on a searched ``choice``/``grid`` parameter. A ``loss.<param>`` without ``when``
is sampled only for the chosen losses that read it (``raw_rm.losses.LOSSES[name].params``). The whole space is
checked before Ray starts: unknown paths (with the closest known one), unknown or wrong-kind loss names (listing
the valid ones), malformed specs, and every candidate value against the config's own types and rules.

    outcome = run_tune(load_config("raw_rm/configs/tune_default.yaml"))
    outcome.best.params, outcome.best.metrics["val_accuracy"], outcome.registered_version

The experiment folder ``<tune.storage_path>/<tune.name>`` holds Tune's state (``Tuner.restore`` resumes it),
``raw_rm_tune.json`` (base config, space, metric), ``results.csv``, ``plots/*.png`` and ``best_model/``.

Resuming (``tune.resume=true``, same ``tune.name``) keeps finished trials and continues running ones from their
last reported checkpoint (one per evaluation). ASHA's rung records are not part of Tune's saved state in ray
2.60 (the searcher's are), so early-stopping cutoffs start afresh after a restore.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import logging
import math
import shutil
import tempfile
import time
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from raw_rm.config import Config, ConfigError, apply_overrides, config_from_dict

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
STATE_FILE = "raw_rm_tune.json"
ROUND_KEY = "eval_round"  # ASHA's time attribute: evaluations so far (the final-model report repeats the last one)
DONE_KEY = "fit_complete"  # 1.0 on the report that carries the trial's finished model
SUMMARY_METRICS = ("val_accuracy", "val_nll", "val_ece", "val_loss")
METRIC_MODES = {"val_accuracy": "max", "val_nll": "min", "val_ece": "min", "val_loss": "min"}  # selection metrics


# ------------------------------------------------------------------------------------------ space
@dataclass(frozen=True)
class ParamSpec:
    """One searched config path: its distribution and the conditions under which it is sampled."""

    path: str
    kind: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    args: tuple[Any, ...]  # choice/grid: the values; otherwise (low, high)
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (path, allowed values) pairs, all must hold

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this parameter is sampled given the values of the parameters it depends on."""
        return all(values.get(path) in allowed for path, allowed in self.when)


def leaf_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every settable dotted path of the config tree (``loss.temperature``, ``data.synthetic.seed``, ...)."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out += leaf_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def parse_space(space: dict[str, Any], base: Config) -> list[ParamSpec]:
    """Validate ``tune.space`` against the config tree and the loss registry; specs in sampling order.

    Raises:
        ConfigError: every problem found, one per line, e.g.
            ``tune.space: loss.name: unknown loss "hinge"; valid: bt, margin, ...``.
    """
    errors: list[str] = []
    known = leaf_paths()
    specs: dict[str, ParamSpec] = {}
    for path, raw in (space or {}).items():
        where = f"tune.space: {path}"
        if path not in known:
            close = difflib.get_close_matches(str(path), known, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            errors.append(f"{where}: unknown config path{hint}")
            continue
        if path.startswith("tune."):
            errors.append(f"{where}: the search cannot change its own tune.* settings")
            continue
        spec = _parse_spec(path, raw, where, errors)
        if spec is not None:
            specs[path] = spec
    if not errors:
        _check_values(specs, base, errors)
        _resolve_conditions(specs, base, errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return _sampling_order(list(specs.values()))


def _parse_spec(path: str, raw: Any, where: str, errors: list[str]) -> ParamSpec | None:
    example = '{"loguniform": [0.05, 5]} or {"choice": [bt, focal]}'
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a distribution spec such as {example}, got {raw!r}")
        return None
    when = raw.get("when", {})
    kinds = [k for k in raw if k != "when"]
    unknown = [k for k in kinds if k not in DISTRIBUTIONS]
    if unknown or len(kinds) != 1:
        bad = f'unknown distribution "{unknown[0]}"' if unknown else f"expected exactly one distribution, got {len(kinds)}"
        errors.append(f"{where}: {bad}; valid: {', '.join(DISTRIBUTIONS)} (plus an optional when)")
        return None
    kind, args = kinds[0], raw[kinds[0]]
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            errors.append(f"{where}: {kind} expects a non-empty list of values, got {args!r}")
            return None
    else:
        if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)):
            errors.append(f"{where}: {kind} expects [low, high] numbers, got {args!r}")
            return None
        low, high = args
        if not low < high:
            errors.append(f"{where}: {kind} expects low < high, got [{low}, {high}]")
            return None
        if kind == "loguniform" and low <= 0:
            errors.append(f"{where}: loguniform expects low > 0, got {low}")
            return None
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            errors.append(f"{where}: randint expects integer bounds [low, high) , got {args!r}")
            return None
    if when and kind == "grid":
        errors.append(f"{where}: a grid parameter cannot have a when condition (use choice)")
        return None
    if not isinstance(when, dict):
        errors.append(f"{where}: when expects a mapping {{path: value or [values]}}, got {when!r}")
        return None
    conditions = tuple((str(p), tuple(v) if isinstance(v, list) else (v,)) for p, v in when.items())
    return ParamSpec(path=path, kind=kind, args=tuple(args), when=conditions)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(specs: dict[str, ParamSpec], base: Config, errors: list[str]) -> None:
    """Every candidate value (choices, bounds) must pass the config's types and rules; loss names the registry."""
    for spec in specs.values():
        where = f"tune.space: {spec.path}"
        if spec.path == "loss.name":
            bad = [m for m in (_loss_name_problem(v, base) for v in spec.args) if m]
            if bad:
                errors.extend(f"{where}: {m}" for m in bad)
                continue
        for value in spec.args:
            try:
                apply_overrides(base, {spec.path: value})
            except ConfigError as exc:
                reason = str(exc).split(": ", 1)[-1]
                errors.append(f"{where}: value {value!r} is not valid here: {reason}")


def _loss_name_problem(name: Any, base: Config) -> str | None:
    from raw_rm.losses import LOSSES

    if name not in LOSSES:
        return f'unknown loss "{name}"; valid: {", ".join(LOSSES)}'
    group = LOSSES[name].kind == "group"
    if group and base.data.kind != "groups":
        pair_names = ", ".join(n for n, s in LOSSES.items() if s.kind == "pair")
        return f'loss "{name}" is a ranking loss for k-wise groups (data.kind=groups); pairwise losses: {pair_names}'
    return None


def _resolve_conditions(specs: dict[str, ParamSpec], base: Config, errors: list[str]) -> None:
    """Check explicit ``when`` clauses; infer them for loss parameters (sampled only for losses that read them)."""
    from raw_rm.losses import LOSSES

    names = specs.get("loss.name")
    for path, spec in list(specs.items()):
        where = f"tune.space: {path}"
        for cond_path, allowed in spec.when:
            parent = specs.get(cond_path)
            if parent is None or parent.kind not in ("choice", "grid"):
                errors.append(f"{where}: when: {cond_path} must be a searched choice or grid parameter of tune.space")
                continue
            missing = [v for v in allowed if v not in parent.args]
            if missing:
                errors.append(f"{where}: when: {cond_path}={missing[0]!r} is not one of its values {list(parent.args)}")
                continue
            if cond_path == "loss.name" and path.startswith("loss."):
                param = path.split(".", 1)[1]
                unused = [n for n in allowed if param not in LOSSES[n].params]
                if unused:
                    uses = ", ".join(n for n, s in LOSSES.items() if param in s.params) or "none"
                    errors.append(f'{where}: when: loss "{unused[0]}" does not read {param} (losses that do: {uses})')
        if spec.when or names is None or not path.startswith("loss.") or path == "loss.name":
            continue
        param = path.split(".", 1)[1]
        readers = tuple(n for n in names.args if n in LOSSES and param in LOSSES[n].params)
        if readers:
            specs[path] = ParamSpec(path, spec.kind, spec.args, (("loss.name", readers),))
        elif any(param in s.params for s in LOSSES.values()):
            errors.append(f"{where}: none of the searched losses {list(names.args)} reads {param}")


def _sampling_order(specs: list[ParamSpec]) -> list[ParamSpec]:
    """Parents before the parameters conditioned on them (define-by-run samples in this order)."""
    ordered: list[ParamSpec] = []
    pending = list(specs)
    while pending:
        ready = [s for s in pending if all(p in {o.path for o in ordered} for p, _ in s.when)]
        if not ready:
            cycle = ", ".join(s.path for s in pending)
            raise ConfigError(f"tune.space: circular when conditions among {cycle}")
        ordered += ready
        pending = [s for s in pending if s not in ready]
    return ordered


def baseline_point(specs: list[ParamSpec], base: Config) -> dict[str, Any]:
    """The base config's own values of the searched paths (what an untuned run would use)."""
    data = asdict(base)
    point: dict[str, Any] = {}
    for spec in specs:
        value: Any = data
        for part in spec.path.split("."):
            value = value[part]
        point[spec.path] = value if spec.active(point) else None
    return point


def trial_config(base: Config | dict[str, Any], params: dict[str, Any]) -> Config:
    """The config of one trial: base plus the sampled values (parameters left unsampled are None or absent)."""
    cfg = base if isinstance(base, Config) else config_from_dict(base, source="tune base config")
    return apply_overrides(cfg, {k: v for k, v in params.items() if v is not None})


# ------------------------------------------------------------------------- Tune search algorithms
class ConditionalSample:
    """``tune.sample_from`` function: draw ``domain`` when the spec's conditions hold, else None (random search).

    Tune passes no random state to ``sample_from`` and copies the space for every trial, so the draw is seeded
    from ``seed`` and the trial's other resolved values: reproducible, and different from trial to trial.
    """

    def __init__(self, spec: ParamSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed

    def __call__(self, config: dict[str, Any]) -> Any:
        import hashlib

        import numpy as np

        if not self.spec.active(config):
            return None
        resolved = sorted((k, v) for k, v in config.items() if isinstance(v, (str, int, float, bool)))
        digest = hashlib.sha256(repr((self.seed, self.spec.path, resolved)).encode()).digest()
        rng = np.random.RandomState(int.from_bytes(digest[:4], "little"))
        return _tune_domain(self.spec).sample(random_state=rng)


class DefineByRunSpace:
    """Optuna define-by-run space with conditional parameters (a class so OptunaSearch can pickle its state)."""

    def __init__(self, specs: list[ParamSpec]) -> None:
        self.specs = specs

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = {}
        for spec in self.specs:
            if not spec.active(values):
                continue
            low, high = (spec.args + (None, None))[:2]
            if spec.kind == "choice":
                values[spec.path] = trial.suggest_categorical(spec.path, list(spec.args))
            elif spec.kind == "randint":
                values[spec.path] = trial.suggest_int(spec.path, low, high - 1)  # Tune's randint excludes high
            else:
                values[spec.path] = trial.suggest_float(spec.path, low, high, log=spec.kind == "loguniform")
        return None


def _tune_domain(spec: ParamSpec) -> Any:
    from ray import tune

    low, high = (spec.args + (None, None))[:2]
    return {
        "choice": lambda: tune.choice(list(spec.args)),
        "grid": lambda: tune.grid_search(list(spec.args)),
        "uniform": lambda: tune.uniform(low, high),
        "loguniform": lambda: tune.loguniform(low, high),
        "randint": lambda: tune.randint(low, high),
    }[spec.kind]()


def build_search(specs: list[ParamSpec], cfg: Config, baseline: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """(param_space, search_alg) for ``cfg.tune.searcher``.

    Random: Tune domains, conditionals through ``tune.sample_from``. Optuna: a define-by-run function passed as
    OptunaSearch's ``space`` (supported by ray 2.60's OptunaSearch; a dict space cannot express conditions).
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Unsampled conditional parameters are left out: the searchers skip them by the same conditions.
    points = [{k: v for k, v in baseline.items() if v is not None}] if baseline is not None else None
    if cfg.tune.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        grids = [s.path for s in specs if s.kind == "grid"]
        if grids:
            raise ConfigError(f"tune.space: {grids[0]}: grid needs tune.searcher=random (Optuna samples, it does not enumerate)")
        bad = [s.path for s in specs if s.kind == "choice" and not all(isinstance(v, (str, int, float, bool, type(None))) for v in s.args)]
        if bad:
            raise ConfigError(f"tune.space: {bad[0]}: Optuna choices must be strings, numbers, booleans or null")
        search = OptunaSearch(
            space=DefineByRunSpace(specs), metric=cfg.tune.metric, mode=cfg.tune.mode,
            points_to_evaluate=points, seed=cfg.train.seed,
        )
        return {}, search
    space: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        space[spec.path] = tune.sample_from(ConditionalSample(spec, cfg.train.seed + i)) if spec.when else _tune_domain(spec)
    # Tune applies max_concurrent_trials only to a Searcher, so the variant generator gets its own bound.
    search = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=cfg.tune.max_concurrent, random_state=cfg.train.seed)
    return space, search


# ----------------------------------------------------------------------------------------- trials
# Why a function trainable: under Ray Train V2 (the default in ray 2.60) `Tuner(TorchTrainer(...))` fails, and
# Ray's recommended Tune integration is a function trainable that reports with `ray.tune.report` and saves
# `tune.Checkpoint`s (shared/STACK_NOTES.md, "Ray Train"). Each trial therefore runs THE loop
# (RewardModelTrainer) in one process with `tune.with_resources` (CPU/GPU fractions per trial) and Tune bounds the
# concurrency. A multi-worker trial would instead call `raw_rm.train.ray_train.train_ray` from this function
# with the trial's config: its TorchTrainer gets the workers' resources, the trial itself only ~0.1 CPU
# (`tune.with_resources` on a placement group), and its reports are forwarded with Ray's Tune callback.
def runtime_config(cfg: Config, scratch: Path, tune_cfg: Any) -> Config:
    """What every trial changes in its config: its own folder, Tune's metric as the loop's best-model metric,
    a checkpoint at every evaluation (so each report can be resumed), no own MLflow run, no progress bar."""
    overrides: dict[str, Any] = {
        "train.output_dir": str(scratch / "train"),
        "train.resume": False,
        "train.progress": False,
        "train.early_stopping_metric": tune_cfg.metric,
        "train.early_stopping_mode": tune_cfg.mode,
        "train.restore_best": True,
        "train.checkpoint_every_steps": cfg.train.eval_every_steps,
        "mlflow.enabled": False,
    }
    if cfg.train.num_threads is None:
        overrides["train.num_threads"] = max(1, int(tune_cfg.cpus_per_trial))
    return apply_overrides(cfg, overrides)


class TuneReporter:
    """Loop callback: one ``tune.report`` per evaluation, carrying the checkpoint the loop saved at that step.

    The loop evaluates before it checkpoints at the same step, so ``on_eval`` holds the metrics until
    ``on_checkpoint`` hands over the folder. Tune copies the folder into the experiment's storage inside
    ``report``; the local copy is then removed (a MiniLM checkpoint with optimiser state is ~350 MB).
    """

    def __init__(self, rounds: int = 0) -> None:
        self.rounds = rounds  # evaluations reported so far (restored from the checkpoint on resume)
        self.pending: tuple[int, dict[str, float]] | None = None

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.pending = (step, dict(metrics))

    def on_checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        if self.pending is not None and self.pending[0] == step:
            self.report(self.pending[1], path)

    def report(self, metrics: dict[str, Any], path: str | Path | None, *, done: bool = False) -> None:
        from ray import tune

        if not done:
            self.rounds += 1
        out = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        out[ROUND_KEY] = self.rounds
        out[DONE_KEY] = 1.0 if done else 0.0
        checkpoint = tune.Checkpoint.from_directory(str(path)) if path is not None else None
        self.pending = None
        tune.report(out, checkpoint=checkpoint)
        if path is not None and not done:
            shutil.rmtree(path, ignore_errors=True)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], tune_cfg: dict[str, Any]) -> None:
    """Tune's function trainable: build the trial's config, train with the loop, report each evaluation.

    A trial that finishes reports once more with ``fit_complete=1``: the final checkpoint then also holds
    ``model/`` (``save_model``: restored-best weights with reward normalisation), which the driver registers.
    That report repeats ``eval_round``, so ASHA (whose time attribute it is) does not count it as progress.
    """
    from ray import tune

    from raw_rm.config import TuneConfig

    if not logging.getLogger().handlers:  # a fresh Ray worker: show the loop's progress lines in the driver's log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Scratch outside Tune's trial folder: Tune syncs that folder to storage with every experiment snapshot,
    # which would copy (and race with the removal of) the loop's checkpoints. What must last goes via report().
    scratch = Path(tempfile.mkdtemp(prefix=f"raw_rm_{tune.get_context().get_trial_id()}_"))
    try:
        _train_and_report(params, base, TuneConfig(**tune_cfg), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_and_report(params: dict[str, Any], base: dict[str, Any], tune_cfg: Any, scratch: Path) -> None:
    import contextlib

    from ray import tune

    from raw_rm.data import load_train_val
    from raw_rm.models import build_model, save_model
    from raw_rm.train.local import data_fingerprint, summarise_fit
    from raw_rm.train.loop import RewardModelTrainer

    cfg = runtime_config(trial_config(base, params), scratch, tune_cfg)
    model, tokenizer = build_model(cfg.model)
    train_records, val_records, _ = load_train_val(cfg, tokenizer=tokenizer)
    if getattr(model.metadata, "data_fingerprint", None) is None:
        model.metadata.data_fingerprint = data_fingerprint(train_records)
    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as resume_dir:
        rounds = 0
        if resume_dir is not None:
            state = json.loads((Path(resume_dir) / "trainer_state.json").read_text())
            rounds = len(state.get("history", []))
        reporter = TuneReporter(rounds)
        trainer = RewardModelTrainer(cfg, model, tokenizer, train_records, val_records, callbacks=[reporter])
        fit = trainer.fit(resume_from=resume_dir)
    final_dir = scratch / "final"
    trainer.save_checkpoint(final_dir)
    save_model(model, tokenizer, final_dir / "model")
    metrics = summarise_fit(fit)
    (final_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    reporter.report(metrics, final_dir, done=True)


# ----------------------------------------------------------------------------------------- driver
@dataclass
class TrialSummary:
    """One trial as the results table shows it."""

    trial_id: str
    status: Literal["completed", "stopped_early", "error", "interrupted", "pending"]
    params: dict[str, Any]  # the searched paths (None: conditional parameter not sampled)
    value: float | None  # selection metric: the final (restored-best) value if completed, else the best reported
    metrics: dict[str, float]  # last report
    evaluations: int
    is_baseline: bool = False
    checkpoint: str | None = None  # latest checkpoint folder (holds model/ when completed)
    error: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per report


@dataclass
class TuneOutcome:
    """What ``run_tune`` returns."""

    experiment_path: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None  # best completed trial
    baseline: TrialSummary | None  # the trial with the base config's values (tune.baseline)
    interrupted: bool  # some trials did not finish: run again with tune.resume=true
    results_csv: str | None = None
    plots: list[str] = field(default_factory=list)
    best_model_dir: str | None = None
    registered_version: str | None = None
    mlflow_run_id: str | None = None

    @property
    def num_errors(self) -> int:
        return sum(t.status == "error" for t in self.trials)

    def gain(self) -> dict[str, float]:
        """Best minus baseline on the summary metrics (empty without a baseline). A baseline that ASHA stopped
        early is compared at its last evaluation (``format_summary`` says so)."""
        if self.best is None or self.baseline is None or not self.baseline.metrics:
            return {}
        keys = [k for k in (self.metric, *SUMMARY_METRICS) if k in self.best.metrics and k in self.baseline.metrics]
        return {k: self.best.metrics[k] - self.baseline.metrics[k] for k in dict.fromkeys(keys)}


def experiment_path(cfg: Config) -> Path:
    """``<tune.storage_path or train.output_dir/tune>/<tune.name>`` (absolute)."""
    storage = Path(cfg.tune.storage_path or Path(cfg.train.output_dir) / "tune").resolve()
    if cfg.tune.name is None:
        raise ConfigError("tune.name is unset: run_tune names the experiment; pass tune.name=... to locate one")
    return storage / cfg.tune.name


def run_tune(cfg: Config, *, callbacks: list[Any] | tuple[Any, ...] = ()) -> TuneOutcome:
    """Search ``cfg.tune.space`` with ASHA, log every trial to MLflow, register the best model as ``candidate``.

    Args:
        cfg: the base config; ``cfg.tune`` holds the space, searcher, metric, scheduler and resources.
        callbacks: extra ``ray.tune.Callback``s (kept in the experiment, so they also run after a restore).

    Raises:
        ConfigError: a bad space, metric or experiment name, found before any trial starts.
        RuntimeError: every trial failed (the message holds the first trial's error).
    """
    if cfg.tune.resume and cfg.tune.name is None:
        raise ConfigError("tune.resume=true needs tune.name: the experiment to continue")
    if cfg.tune.name is None:
        cfg = apply_overrides(cfg, {"tune.name": f"tune-{time.strftime('%Y%m%d-%H%M%S')}"})
    exp = experiment_path(cfg)
    if cfg.tune.resume:  # trials rebuild from the saved base config, so a restored trial trains exactly as before
        state_file = exp / STATE_FILE
        if not state_file.exists():
            raise ConfigError(f"tune.resume=true but {exp} holds no raw_rm Tune experiment to restore (no {STATE_FILE})")
        base = config_from_dict(json.loads(state_file.read_text())["base"], source=str(state_file))
        specs = parse_space(base.tune.space, base)
    else:
        base = cfg
        specs = parse_space(cfg.tune.space, cfg)  # the whole space is checked before Ray is even imported
        _check_new_experiment(cfg, specs, exp)

    from ray import tune

    from raw_rm.train.ray_train import init_ray

    init_ray(cfg.ray.address)
    trainable = _trainable(base)
    if cfg.tune.resume:
        logger.info("restoring %s: finished trials are kept, unfinished ones resume from their last checkpoint", exp)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        tuner = _new_tuner(base, specs, exp, trainable, callbacks)
    started = time.perf_counter()
    tuner.fit()
    logger.info("search finished in %.0f s", time.perf_counter() - started)
    outcome = collect_results(exp)
    write_results(outcome, specs)
    if outcome.interrupted:
        logger.warning("experiment %s was interrupted: resume with tune.resume=true tune.name=%s", exp, base.tune.name)
        return outcome
    if outcome.trials and outcome.num_errors == len(outcome.trials):
        raise RuntimeError(f"all {len(outcome.trials)} trials failed; first error:\n{outcome.trials[0].error}")
    if outcome.best is not None:
        outcome.best_model_dir = str(_export_best(outcome.best, exp))
    if cfg.mlflow.enabled:  # the experiment's own config, with this invocation's MLflow settings
        log_to_mlflow(dataclasses.replace(base, mlflow=cfg.mlflow), outcome, specs)
    return outcome


def _check_new_experiment(cfg: Config, specs: list[ParamSpec], exp: Path) -> None:
    if not specs:
        raise ConfigError("tune.space is empty: give at least one path, e.g. train.lr: {loguniform: [1.0e-5, 1.0e-3]}")
    if cfg.ray.num_workers > 1:
        raise ConfigError(
            f"ray.num_workers={cfg.ray.num_workers}: each Tune trial trains in one process here; set ray.num_workers=1 "
            "and use tune.cpus_per_trial / tune.gpus_per_trial for its resources"
        )
    metric, mode = cfg.tune.metric, cfg.tune.mode
    if not metric.startswith("val_"):
        raise ConfigError(f"tune.metric={metric!r}: trials report validation metrics, e.g. {', '.join(METRIC_MODES)}")
    if METRIC_MODES.get(metric, mode) != mode:
        raise ConfigError(f"tune.metric={metric} is better when {'higher' if mode == 'min' else 'lower'}: set tune.mode={METRIC_MODES[metric]}")
    if exp.exists():
        raise ConfigError(f"{exp} already exists: set tune.resume=true to continue it, or choose another tune.name")


def _trainable(base: Config) -> Any:
    from ray import tune

    resources = {"cpu": base.tune.cpus_per_trial}
    if base.tune.gpus_per_trial:
        resources["gpu"] = base.tune.gpus_per_trial
    fn = tune.with_parameters(run_trial, base=asdict(base), tune_cfg=asdict(base.tune))
    return tune.with_resources(fn, resources)


def _build_baseline_keeping_asha() -> type:
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    class BaselineKeepingASHA(AsyncHyperBandScheduler):
        """ASHA that records the baseline trial at every rung but never stops it, so the search's gain over
        the untuned config is measured on a fully trained baseline (it would otherwise be cut whenever a
        better trial reaches a rung first)."""

        def __init__(self, *, baseline: dict[str, Any] | None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.baseline = baseline

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            config = {k: v for k, v in (trial.config or {}).items() if v is not None}
            return TrialScheduler.CONTINUE if self.baseline is not None and config == self.baseline else action

    BaselineKeepingASHA.__module__ = __name__
    BaselineKeepingASHA.__qualname__ = "BaselineKeepingASHA"
    globals()["BaselineKeepingASHA"] = BaselineKeepingASHA
    return BaselineKeepingASHA


def __getattr__(name: str) -> Any:
    # Built on first use so that importing raw_rm.tune does not import Ray; a module attribute, so the
    # scheduler pickles by reference into Tune's experiment state and unpickles on restore.
    if name == "BaselineKeepingASHA":
        return _build_baseline_keeping_asha()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _new_tuner(base: Config, specs: list[ParamSpec], exp: Path, trainable: Any, callbacks: Any) -> Any:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    tc = base.tune
    with_grid = any(s.kind == "grid" for s in specs)
    baseline = baseline_point(specs, base) if tc.baseline and not with_grid else None
    if tc.baseline and with_grid:
        logger.info("tune.baseline ignored: a grid already enumerates its values")
    param_space, search_alg = build_search(specs, base, baseline)
    points = [{k: v for k, v in baseline.items() if v is not None}] if baseline is not None else None
    if tc.scheduler == "asha":
        # max_t only places the rungs (grace_period * reduction_factor^k evaluations); trials end by themselves.
        scheduler: Any = __getattr__("BaselineKeepingASHA")(
            baseline=points[0] if points else None,
            time_attr=ROUND_KEY, grace_period=tc.grace_period, reduction_factor=tc.reduction_factor, max_t=10_000,
        )
    else:
        scheduler = FIFOScheduler()
    exp.mkdir(parents=True, exist_ok=True)
    expected = tc.num_samples * math.prod(len(s.args) for s in specs if s.kind == "grid")
    state = {
        "base": asdict(base), "metric": tc.metric, "mode": tc.mode, "baseline": baseline,
        "expected_trials": expected, "created": time.time(),
    }
    (exp / STATE_FILE).write_text(json.dumps(state, indent=1))
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=tc.metric, mode=tc.mode, search_alg=search_alg, scheduler=scheduler, num_samples=tc.num_samples,
            max_concurrent_trials=tc.max_concurrent if tc.searcher == "optuna" else None,  # random: bounded by its generator
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a new trial in a warm process skips ~10-20 s of torch/transformers imports
        ),
        run_config=tune.RunConfig(
            name=exp.name, storage_path=str(exp.parent), callbacks=list(callbacks),
            # The latest checkpoint resumes a trial; keeping 2 halves the experiment snapshots Tune forces.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=base.ray.max_failures),
        ),
    )


# ---------------------------------------------------------------------------------------- results
def collect_results(exp: str | Path) -> TuneOutcome:
    """Read an experiment folder (no Ray needed): every trial's status, params, reports and latest checkpoint."""
    exp = Path(exp)
    state_file = exp / STATE_FILE
    if not state_file.exists():
        raise FileNotFoundError(f"{exp}: not a raw_rm Tune experiment (no {STATE_FILE})")
    state = json.loads(state_file.read_text())
    metric, mode = state["metric"], state["mode"]
    baseline = {k: v for k, v in (state.get("baseline") or {}).items() if v is not None}
    trials: list[TrialSummary] = []
    for saved in _saved_trials(exp):
        trial_dir = exp / saved["relative_logdir"]
        history = _read_jsonl(trial_dir / "result.json")
        last = history[-1] if history else {}
        status = _status(saved["status"], history)
        values = [h[metric] for h in history if _is_number(h.get(metric))]
        if status == "completed" and _is_number(last.get(metric)):
            value: float | None = float(last[metric])
        else:
            value = (max(values) if mode == "max" else min(values)) if values else None
        params = dict(saved["config"])
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        error = None
        if saved.get("error_filename"):
            error_file = trial_dir / saved["error_filename"]
            error = error_file.read_text()[-4000:] if error_file.exists() else "error (no error file)"
        trials.append(TrialSummary(
            trial_id=saved["trial_id"], status=status, params=params, value=value,
            metrics={k: float(v) for k, v in last.items() if _is_number(v)},
            evaluations=int(max((h.get(ROUND_KEY, 0) for h in history), default=0)),
            is_baseline=bool(baseline) and {k: v for k, v in params.items() if v is not None} == baseline,
            checkpoint=str(checkpoints[-1]) if checkpoints else None, error=error,
            history=[{k: float(v) for k, v in h.items() if _is_number(v)} for h in history],
        ))
    seen_baseline = False
    for t in trials:  # only the first trial with the baseline's values is the baseline
        t.is_baseline, seen_baseline = t.is_baseline and not seen_baseline, seen_baseline or t.is_baseline
    completed = [t for t in trials if t.status == "completed" and t.value is not None and not math.isnan(t.value)]
    best = (max if mode == "max" else min)(completed, key=lambda t: t.value) if completed else None
    expected = state.get("expected_trials") or 0
    interrupted = len(trials) < expected or any(t.status in ("interrupted", "pending") for t in trials)
    return TuneOutcome(
        experiment_path=str(exp), metric=metric, mode=mode, trials=trials, best=best,
        baseline=next((t for t in trials if t.is_baseline), None), interrupted=interrupted,
    )


def _saved_trials(exp: Path) -> list[dict[str, Any]]:
    """Trials as Tune's newest experiment state saved them (statuses included; no Ray needed)."""
    # Each (re)start writes experiment_state-<start time>.json; names sort by time (mtimes do not: a restore
    # syncs the older files again).
    states = sorted(exp.glob("experiment_state-*.json"))
    if not states:
        return []
    out = []
    for trial_json, runtime_json in json.loads(states[-1].read_text())["trial_data"]:
        trial = json.loads(trial_json)
        runtime = json.loads(runtime_json)
        out.append({
            "trial_id": trial["trial_id"], "status": trial["status"], "relative_logdir": trial["relative_logdir"],
            "config": trial["config"], "error_filename": runtime.get("error_filename"),
        })
    return sorted(out, key=lambda t: t["trial_id"])


def _status(saved: str, history: list[dict[str, Any]]) -> str:
    if saved == "ERROR":
        return "error"
    if saved != "TERMINATED":
        return "interrupted" if history else "pending"
    if history and history[-1].get(DONE_KEY) == 1.0:
        return "completed"
    return "stopped_early" if history else "pending"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def top_k_configs(experiment_path: str | Path, k: int) -> list[Config]:
    """The configs of the ``k`` best completed trials, best first (ensemble members from a search).

    Raises:
        ValueError: fewer than ``k`` trials completed.
    """
    outcome = collect_results(experiment_path)
    state = json.loads((Path(experiment_path) / STATE_FILE).read_text())
    completed = [t for t in outcome.trials if t.status == "completed" and t.value is not None and not math.isnan(t.value)]
    completed.sort(key=lambda t: t.value, reverse=outcome.mode == "max")
    if len(completed) < k:
        raise ValueError(f"{experiment_path}: asked for the top {k} configs but only {len(completed)} trials completed")
    base = config_from_dict(state["base"], source=str(Path(experiment_path) / STATE_FILE))
    return [trial_config(base, t.params) for t in completed[:k]]


def results_rows(outcome: TuneOutcome, specs: list[ParamSpec]) -> list[dict[str, Any]]:
    """One row per trial, best first: id, status, the searched values, the selection metric, final metrics."""
    paths = [s.path for s in specs]
    sign = -1 if outcome.mode == "max" else 1
    order = sorted(outcome.trials, key=lambda t: (t.value is None, sign * (t.value or 0.0)))
    rows = []
    for t in order:
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status, "baseline": t.is_baseline}
        row.update({p: t.params.get(p) for p in paths})
        row[outcome.metric] = t.value
        row.update({f"last_{m}": t.metrics.get(m) for m in SUMMARY_METRICS})  # completed: the final model
        row["evaluations"] = t.evaluations
        row["steps"] = t.metrics.get("steps", t.metrics.get("step"))
        rows.append(row)
    return rows


def write_results(outcome: TuneOutcome, specs: list[ParamSpec]) -> None:
    """``results.csv`` and ``plots/*.png`` in the experiment folder (paths recorded on ``outcome``)."""
    exp = Path(outcome.experiment_path)
    rows = results_rows(outcome, specs)
    if not rows:
        return
    csv_path = exp / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    outcome.results_csv = str(csv_path)
    outcome.plots = plot_results(outcome, specs, exp / "plots")


def plot_results(outcome: TuneOutcome, specs: list[ParamSpec], out_dir: Path) -> list[str]:
    """Selection metric against τ and against the learning rate, and a parallel-coordinates view of all trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    scored = [t for t in outcome.trials if t.value is not None and not math.isnan(t.value)]
    written = []
    for path, name in (("loss.temperature", "metric_vs_temperature.png"), ("train.lr", "metric_vs_lr.png")):
        points = [(t.params.get(path), t.value, t.status) for t in scored if _is_number(t.params.get(path))]
        if not points:
            logger.info("plot %s skipped: %s was not searched (or never sampled)", name, path)
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for status, marker in (("completed", "o"), ("stopped_early", "x"), ("interrupted", "s")):
            xs = [p[0] for p in points if p[2] == status]
            ys = [p[1] for p in points if p[2] == status]
            if xs:
                ax.scatter(xs, ys, marker=marker, label=status.replace("_", " "))
        base = outcome.baseline
        if base is not None and base.value is not None and _is_number(base.params.get(path)):
            ax.annotate("baseline", (base.params[path], base.value), xytext=(4, 4), textcoords="offset points", fontsize=8)
        spec = next((s for s in specs if s.path == path), None)
        if spec is not None and spec.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel("τ (loss.temperature)" if path == "loss.temperature" else "learning rate (train.lr)")
        ax.set_ylabel(f"{outcome.metric} ({outcome.mode} is better)")
        ax.set_title(f"{outcome.metric} against {path}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(str(out_dir / name))
    if scored:
        written.append(_parallel_coordinates(plt, outcome, specs, scored, out_dir / "parallel_coordinates.png"))
    return written


NOT_SAMPLED_Y = -0.12  # where a conditional parameter that was not sampled sits on its axis ("n/a")


def _parallel_coordinates(plt: Any, outcome: TuneOutcome, specs: list[ParamSpec], trials: list[TrialSummary], path: Path) -> str:
    axes = [s.path for s in specs] + [outcome.metric]
    columns: list[list[float]] = []
    ticks: list[tuple[list[float], list[str]]] = []
    for spec_path in axes:
        raw = [t.value if spec_path == outcome.metric else t.params.get(spec_path) for t in trials]
        spec = next((s for s in specs if s.path == spec_path), None)
        if spec is not None and spec.kind in ("choice", "grid"):
            levels = list(dict.fromkeys(spec.args))
            pos = [levels.index(v) / max(1, len(levels) - 1) if v in levels else NOT_SAMPLED_Y for v in raw]
            ticks.append(([i / max(1, len(levels) - 1) for i in range(len(levels))], [str(v) for v in levels]))
        else:
            log = spec is not None and spec.kind == "loguniform"
            nums = [(math.log10(v) if log else float(v)) if _is_number(v) and (v > 0 or not log) else math.nan for v in raw]
            finite = [v for v in nums if not math.isnan(v)]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            span = hi - lo or 1.0
            pos = [(v - lo) / span if not math.isnan(v) else NOT_SAMPLED_Y for v in nums]
            labels = [10**lo, 10**hi] if log else [lo, hi]
            ticks.append(([0.0, 1.0], [f"{v:.3g}" for v in labels]) if finite else ([], []))
        if any(p == NOT_SAMPLED_Y for p in pos):
            ticks[-1] = (ticks[-1][0] + [NOT_SAMPLED_Y], ticks[-1][1] + ["n/a"])
        columns.append(pos)
    fig, ax = plt.subplots(figsize=(1.8 * len(axes) + 2, 4.5))
    values = [t.value for t in trials]
    lo, hi = min(values), max(values)
    cmap = plt.get_cmap("viridis" if outcome.mode == "max" else "viridis_r")
    for i, t in enumerate(trials):
        ys = [col[i] for col in columns]
        colour = cmap((t.value - lo) / ((hi - lo) or 1.0))
        style = "-" if t.status == "completed" else ":"
        ax.plot(range(len(axes)), ys, style, color=colour, lw=3 if t is outcome.best else 1.2, marker="o", ms=3)
    for x, (positions, labels) in enumerate(ticks):
        ax.axvline(x, color="grey", lw=0.5)
        for p, label in zip(positions, labels, strict=True):
            ax.annotate(label, (x, p), xytext=(3, 0), textcoords="offset points", fontsize=7, va="center")
    ax.axhline(NOT_SAMPLED_Y / 2, color="lightgrey", lw=0.5, ls="--")
    ax.set_xticks(range(len(axes)), axes, rotation=20, fontsize=8)
    ax.set_yticks([])
    better = "higher" if outcome.mode == "max" else "lower"
    ax.set_title(f"trials (colour: {outcome.metric}, yellow = better ({better}); dotted: not completed; bold: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _export_best(best: TrialSummary, exp: Path) -> Path:
    """Copy the best trial's finished model out of its checkpoint into ``<experiment>/best_model``."""
    if best.checkpoint is None or not (Path(best.checkpoint) / "model").is_dir():
        raise FileNotFoundError(f"trial {best.trial_id}: its final checkpoint {best.checkpoint} holds no model/ folder")
    target = exp / "best_model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(best.checkpoint) / "model", target)
    return target


# ----------------------------------------------------------------------------------------- MLflow
def log_to_mlflow(cfg: Config, outcome: TuneOutcome, specs: list[ParamSpec]) -> None:
    """One parent run per experiment, a nested run per trial (params + per-evaluation metrics); the best
    trial's model is logged on its run and registered as a new version with alias ``candidate``.

    Idempotent: a resumed experiment finds its parent run and the trial runs already logged by their tags.
    """
    from raw_rm import tracking

    client = tracking.client_for(cfg.mlflow.tracking_uri)
    experiment_id = tracking.ensure_experiment(client, cfg.mlflow)
    exp_path = outcome.experiment_path
    lineage = {
        "tune_experiment": exp_path, "data_fingerprint": tracking.data_fingerprint(cfg.data),
        "data_source": cfg.data.train_path or "synthetic", "git_commit": tracking.git_commit(),
        "base_model": cfg.model.backbone, "arch": cfg.model.arch,
    }
    parent = _find_run(client, experiment_id, exp_path, "parent")
    if parent is None:
        run = client.create_run(experiment_id, tags={**lineage, "tune_role": "parent"}, run_name=Path(exp_path).name)
        parent = run.info.run_id
        params = tracking.flatten(cfg.to_dict())
        params["tune.space"] = json.dumps(cfg.tune.space)
        tracking.log_params(client, parent, params)
    outcome.mlflow_run_id = parent
    trial_runs = {}
    for trial in outcome.trials:
        trial_runs[trial.trial_id] = _log_trial(client, experiment_id, parent, trial, lineage)
    summary = {f"best_{outcome.metric}": outcome.best.value} if outcome.best is not None and outcome.best.value is not None else {}
    summary.update({f"gain_{k}": v for k, v in outcome.gain().items()})
    summary.update({"trials": len(outcome.trials), "trials_stopped_early": sum(t.status == "stopped_early" for t in outcome.trials)})
    tracking.TrackedRun(client, parent, experiment_id, cfg.mlflow.tracking_uri, lineage).log_metrics(summary)
    if outcome.results_csv:
        client.log_artifact(parent, outcome.results_csv)
    for plot in outcome.plots:
        client.log_artifact(parent, plot, "plots")
    if outcome.best is not None:
        client.set_tag(parent, "best_trial", outcome.best.trial_id)
        if cfg.mlflow.register and outcome.best_model_dir:
            outcome.registered_version = _register_best(cfg, client, outcome, trial_runs[outcome.best.trial_id], lineage)
            client.set_tag(parent, "registered_version", f"{cfg.mlflow.registered_model}/{outcome.registered_version}")
    client.set_terminated(parent, "FINISHED")


def _find_run(client: Any, experiment_id: str, exp_path: str, role: str, trial_id: str | None = None) -> str | None:
    query = f"tags.tune_experiment = '{exp_path}' and tags.tune_role = '{role}'"
    if trial_id is not None:
        query += f" and tags.tune_trial_id = '{trial_id}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def _log_trial(client: Any, experiment_id: str, parent: str, trial: TrialSummary, lineage: dict[str, str]) -> str:
    from raw_rm.tracking import MlflowCallback, flatten, log_params

    existing = _find_run(client, experiment_id, lineage["tune_experiment"], "trial", trial.trial_id)
    if existing is not None:
        return existing
    tags = {
        **lineage, "tune_role": "trial", "tune_trial_id": trial.trial_id, "tune_status": trial.status,
        "tune_baseline": str(trial.is_baseline).lower(), "mlflow.parentRunId": parent,
    }
    run_id = client.create_run(experiment_id, tags=tags, run_name=trial.trial_id).info.run_id
    log_params(client, run_id, flatten(trial.params))  # dotted names already; lists, None and booleans as JSON
    callback = MlflowCallback(client.tracking_uri, run_id)
    for report in trial.history:  # one point per evaluation, at its training step
        if report.get(DONE_KEY) == 1.0:
            continue
        callback.on_eval(int(report.get("step", report.get(ROUND_KEY, 0))), {k: v for k, v in report.items() if k.startswith("val_")})
    final = {f"final_{k}": v for k, v in trial.metrics.items() if k.startswith("val_") or k in ("steps", "pairs_per_s", "tokens_per_s")}
    callback.on_eval(int(trial.metrics.get("steps", trial.metrics.get("step", 0))), {**final, "evaluations": trial.evaluations})
    status = {"completed": "FINISHED", "error": "FAILED"}.get(trial.status, "KILLED")
    if trial.error:
        client.set_tag(run_id, "tune_error", trial.error[-4000:])
    client.set_terminated(run_id, status)
    return run_id


def _register_best(cfg: Config, client: Any, outcome: TuneOutcome, run_id: str, lineage: dict[str, str]) -> str:
    from raw_rm.registry import register_model
    from raw_rm.tracking import MODEL_ARTIFACT

    best = outcome.best
    assert best is not None and outcome.best_model_dir is not None, "registration needs a completed best trial"
    client.log_artifacts(run_id, outcome.best_model_dir, MODEL_ARTIFACT)
    tags = {**lineage, "tune_trial": best.trial_id, "tune_metric": outcome.metric, f"tune_{outcome.metric}": str(best.value)}
    # What the promotion gate reads (registry.GATE_METRICS): the trial's final validation metrics.
    for gate_key, metric in (("accuracy", "val_accuracy"), ("ece", "val_ece")):
        if metric in best.metrics:
            tags[gate_key] = str(best.metrics[metric])
    return register_model(run_id, MODEL_ARTIFACT, cfg.mlflow.registered_model, tags, tracking_uri=cfg.mlflow.tracking_uri)


def format_summary(outcome: TuneOutcome, specs: list[ParamSpec] | None = None) -> str:
    """The final summary table (best first), the best configuration and its gain over the baseline."""
    paths = [s.path for s in specs] if specs else sorted({k for t in outcome.trials for k in t.params})
    rows = results_rows(outcome, [ParamSpec(p, "choice", ()) for p in paths])
    # "selected": the final model's value for completed trials, the best evaluation for the others
    head = ["trial", "status", *paths, f"selected {outcome.metric}", "last val_accuracy", "last val_nll", "evals"]
    body = []
    for r in rows:
        mark = " *" if outcome.best is not None and r["trial_id"] == outcome.best.trial_id else ""
        mark += " (baseline)" if r["baseline"] else ""
        body.append([r["trial_id"] + mark, r["status"], *(_fmt(r[p]) for p in paths), _fmt(r[outcome.metric]),
                     _fmt(r["last_val_accuracy"]), _fmt(r["last_val_nll"]), str(r["evaluations"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    stopped = sum(t.status == "stopped_early" for t in outcome.trials)
    lines.append(f"\n{len(outcome.trials)} trials: {stopped} stopped early by ASHA, {outcome.num_errors} failed"
                 + ("; INTERRUPTED: resume with tune.resume=true" if outcome.interrupted else ""))
    if outcome.best is not None:
        best = {k: v for k, v in outcome.best.params.items() if v is not None}
        lines.append(f"best trial {outcome.best.trial_id}: {outcome.metric}={_fmt(outcome.best.value)}  {best}")
        gain = outcome.gain()
        if gain and outcome.baseline is not None:
            base = outcome.baseline
            note = "" if base.status == "completed" else f" (the baseline was {base.status.replace('_', ' ')} after {base.evaluations} evaluations)"
            lines.append(f"baseline trial {base.trial_id}: " + ", ".join(f"{k}={_fmt(base.metrics.get(k))}" for k in gain))
            lines.append("gain over the baseline (best - baseline): " + ", ".join(f"{k} {v:+.4f}" for k, v in gain.items()) + note)
    if outcome.results_csv:
        lines.append(f"results: {outcome.results_csv}; plots: {Path(outcome.results_csv).parent / 'plots'}")
    if outcome.best_model_dir:
        lines.append(f"best model: {outcome.best_model_dir}")
    if outcome.registered_version:
        lines.append(f"registered: version {outcome.registered_version} (alias candidate, tag tune_experiment={outcome.experiment_path})")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
