"""MLflow model registry for raw_rm (edge): versions, aliases, the promotion gate, rollback, ``models:/`` URIs.

Every trained model becomes a version of a registered model with alias ``candidate``;
``promote`` moves ``champion`` only when the evaluation gate passes and records the previous champion on the
new one, so ``rollback`` can move ``champion`` back, recording who and why. Runs, params, metrics, artifacts and
lineage are ``raw_rm.tracking.runs``'; this module builds on them (``tracked_training``: track, evaluate for the
gate with ``raw_rm.eval.gate``, register).

    with tracking(cfg) as run:                      # raw_rm.tracking.runs
        result = train_local(cfg, callbacks=[run.callback()])
        run.log_model(result.model_dir)
    version = register_version(run.run_id, "model", "raw_rm-reward", {"note": "first"}, tracking_uri=uri)
    promote("raw_rm-reward", version, cfg.gate, tracking_uri=uri)

Only the MlflowClient API is used, never the fluent globals, so tests and several stores can live in one process.
``models:/NAME@alias`` and ``models:/NAME/3`` URIs resolve to a local model directory through
``resolve_model_uri`` (cached per version); ``uri_resolver(tracking_uri)`` hands that to inference explicitly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

# raw_rm.tracking.runs first: it sets MLflow's environment (no progress bars, no telemetry) before mlflow is imported.
from raw_rm.tracking.runs import MODEL_ARTIFACT, TrackedRun, client_for, store_uri, tracking, user_name  # isort: skip

import mlflow.artifacts  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from raw_rm.config import Config, GateConfig  # noqa: E402
from raw_rm.eval.gate import write_gate_report

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
# Tags written on each model version; the gate and `show` read metrics from them first, then from the run.
GATE_METRICS = ("accuracy", "ece")
_LINEAGE_TAGS = ("data_fingerprint", "data_source", "git_commit", "base_model", "arch", "loss")
_RUN_METRIC_FALLBACKS = {"accuracy": ("eval.accuracy", "val_accuracy"), "ece": ("eval.ece", "val_ece")}


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked; the message says why and what to do."""


class PromotionRefused(RegistryError):
    """The evaluation gate refused a promotion; ``decision.reasons`` lists every failed rule."""

    def __init__(self, decision: GateDecision) -> None:
        self.decision = decision
        super().__init__(f"{decision.name} v{decision.version}: promotion refused: " + "; ".join(decision.reasons))


# ------------------------------------------------------------------------- train, evaluate, register
def tracked_training(
    cfg: Config, train_fn: Callable[..., Any], *, evaluate_fn: Callable[..., Any] | None = None
) -> Any:
    """Run ``train_fn(cfg, callbacks=[...])`` inside an MLflow run, then log, evaluate and register the model.

    ``train_fn`` is ``train_local`` or ``train_ray``; both return a result with ``model_dir``. With
    ``cfg.mlflow.enabled`` false this is just ``train_fn(cfg)``. ``evaluate_fn(cfg, model_dir, report_dir) ->
    dict`` (default: ``raw_rm.eval.gate.write_gate_report``) writes the eval report whose metrics feed the gate.
    The result gains ``mlflow_run_id`` and ``model_version`` (None when not registered) attributes.
    """
    if not cfg.mlflow.enabled:
        return train_fn(cfg)
    with tracking(cfg) as run:
        result = train_fn(cfg, callbacks=[run.callback()])
        # the run's summary: final validation, throughput, steps (and global_batch_size under Ray Train)
        run.log_metrics(result.metrics, prefix="summary.", step=int(result.metrics.get("steps", 0)))
        _, version = log_evaluate_register(cfg, run, Path(result.model_dir), evaluate_fn=evaluate_fn)
    result.mlflow_run_id, result.model_version = run.run_id, version
    log.info(
        "tracked run %s%s", run.run_id, f"; registered {cfg.mlflow.registered_model} v{version}" if version else ""
    )
    return result


def log_evaluate_register(
    cfg: Config,
    run: TrackedRun,
    model_dir: Path,
    *,
    evaluate_fn: Callable[[Config, Path, Path], dict[str, float]] | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[dict[str, float], str | None]:
    """Evaluate ``model_dir`` (``evaluate_fn``, default ``raw_rm.eval.gate.write_gate_report``), log the report and
    the model on ``run``, and with ``mlflow.register`` register the model (tags: the run's, then ``tags``, then the
    gate metrics).

    Returns:
        (the evaluation's metrics, the new version or None when ``mlflow.register`` is off).
    """

    evaluate_fn = evaluate_fn or write_gate_report
    with tempfile.TemporaryDirectory(prefix="raw_rm_eval_") as tmp:
        metrics = evaluate_fn(cfg, model_dir, Path(tmp))  # may save the fitted temperature into model_dir
        run.log_report(tmp, metrics)
    run.log_model(model_dir)
    if not cfg.mlflow.register:
        return metrics, None
    gate_tags = {k: str(metrics[k]) for k in GATE_METRICS if k in metrics}
    version = register_version(
        run.run_id,
        MODEL_ARTIFACT,
        cfg.mlflow.registered_model,
        {**run.tags, **(tags or {}), **gate_tags},
        tracking_uri=cfg.mlflow.tracking_uri,
    )
    run.client.set_tag(run.run_id, "registered_version", f"{cfg.mlflow.registered_model}/{version}")
    return metrics, version


# --------------------------------------------------------------------------------------- registry
def register_version(
    run_id: str, artifact_path: str, name: str, tags: dict[str, str] | None = None, *, tracking_uri: str | None = None
) -> str:
    """Register ``<run artifacts>/artifact_path`` as a new version of ``name`` with alias ``candidate``.

    Uses create_registered_model + create_model_version(source=artifact URI): ``mlflow.register_model`` on a
    plain model folder fails with "Unable to find a logged_model" (docs/development.md, "MLflow").

    Returns:
        The new version number, as a string ("1", "2", ...).
    """
    client = client_for(tracking_uri)
    run = client.get_run(run_id)
    try:
        client.create_registered_model(name, description="raw_rm reward model")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    exp = client.get_experiment(run.info.experiment_id)
    lineage = {"experiment_id": exp.experiment_id, "experiment_name": exp.name}
    lineage.update({k: run.data.tags[k] for k in _LINEAGE_TAGS if k in run.data.tags})
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(name, source, run_id=run_id, tags={**lineage, **(tags or {})})
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    log.info("registered %s v%s from run %s (alias %s)", name, mv.version, run_id, CANDIDATE)
    return str(mv.version)


@dataclass
class VersionInfo:
    """One model version as `registry list/show` print it."""

    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    created_ms: int
    metrics: dict[str, float]
    data_fingerprint: str
    experiment: str
    base_model: str
    git_commit: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)


def _version_info(client: MlflowClient, mv: Any, aliases: list[str]) -> VersionInfo:
    metrics = _version_metrics(client, mv)
    tags = dict(mv.tags or {})
    exp = f"{tags.get('experiment_name', '?')} ({tags.get('experiment_id', '?')})"
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=sorted(aliases),
        run_id=mv.run_id,
        created_ms=int(mv.creation_timestamp or 0),
        metrics=metrics,
        data_fingerprint=tags.get("data_fingerprint", "?"),
        experiment=exp,
        base_model=tags.get("base_model", "?"),
        git_commit=tags.get("git_commit", "?"),
        source=mv.source,
        tags=tags,
    )


def _version_metrics(client: MlflowClient, mv: Any) -> dict[str, float]:
    """Gate metrics of a version: its tags first, then its run's ``eval.*`` metrics, then ``val_*``."""
    out: dict[str, float] = {}
    run_metrics: dict[str, float] | None = None
    for key in GATE_METRICS:
        if key in (mv.tags or {}):
            out[key] = float(mv.tags[key])
            continue
        if run_metrics is None:
            run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        for candidate in _RUN_METRIC_FALLBACKS[key]:
            if candidate in run_metrics:
                out[key] = float(run_metrics[candidate])
                break
    return out


def _get_version(client: MlflowClient, name: str, version: str) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            known = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
            if not known:
                raise RegistryError(f"registered model {name!r} does not exist (or has no versions)") from None
            raise RegistryError(
                f"{name}: no version {version} (versions: {', '.join(sorted(known, key=int))})"
            ) from None
        raise


def _alias_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def list_versions(name: str, *, tracking_uri: str | None = None) -> list[VersionInfo]:
    """Every version of ``name``, newest first, with aliases, gate metrics and lineage."""
    client = client_for(tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise RegistryError(f"registered model {name!r} does not exist (or has no versions)")
    # search_model_versions leaves ModelVersion.aliases empty on this store: read them from the model.
    by_version: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    infos = [_version_info(client, mv, by_version.get(str(mv.version), [])) for mv in versions]
    return sorted(infos, key=lambda v: -int(v.version))


@dataclass
class ModelInfo:
    name: str
    aliases: dict[str, str]  # alias -> version
    tags: dict[str, str]
    versions: list[VersionInfo]


def show(name: str, *, tracking_uri: str | None = None) -> ModelInfo:
    """The registered model ``name``: aliases, tags (rollback history) and every version."""
    client = client_for(tracking_uri)
    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"registered model {name!r} does not exist") from None
        raise
    aliases = dict(sorted((rm.aliases or {}).items()))
    versions = list_versions(name, tracking_uri=tracking_uri)
    return ModelInfo(
        name=name, aliases={k: str(v) for k, v in aliases.items()}, tags=dict(rm.tags or {}), versions=versions
    )


@dataclass
class GateDecision:
    name: str
    version: str
    passed: bool
    reasons: list[str]  # one line per failed rule; empty when passed
    metrics: dict[str, float]
    champion: str | None  # current champion version, if any
    champion_metrics: dict[str, float]


def check_gate(name: str, version: str, gate: GateConfig, *, tracking_uri: str | None = None) -> GateDecision:
    """Evaluate the promotion gate for ``name`` v``version`` against ``gate`` and the current champion."""
    client = client_for(tracking_uri)
    mv = _get_version(client, name, version)
    metrics = _version_metrics(client, mv)
    champion = _alias_version(client, name, CHAMPION)
    champion_metrics = _version_metrics(client, champion) if champion is not None else {}
    reasons = []
    acc, ece = metrics.get("accuracy"), metrics.get("ece")
    if gate.min_accuracy is not None:
        if acc is None:
            reasons.append("accuracy unknown (no 'accuracy' tag or eval.accuracy/val_accuracy run metric)")
        elif acc < gate.min_accuracy:
            reasons.append(f"accuracy {acc:.4f} < gate.min_accuracy {gate.min_accuracy:.4f}")
    if gate.max_ece is not None:
        if ece is None:
            reasons.append("ece unknown (no 'ece' tag or eval.ece/val_ece run metric)")
        elif ece > gate.max_ece:
            reasons.append(f"ece {ece:.4f} > gate.max_ece {gate.max_ece:.4f}")
    if gate.no_worse_than_champion and champion is not None and str(champion.version) != str(version):
        champ_acc = champion_metrics.get("accuracy")
        if acc is None or champ_acc is None:
            reasons.append(f"cannot compare with champion v{champion.version}: accuracy unknown")
        elif acc < champ_acc:
            reasons.append(f"accuracy {acc:.4f} < champion v{champion.version} accuracy {champ_acc:.4f}")
    return GateDecision(
        name=name,
        version=str(version),
        passed=not reasons,
        reasons=reasons,
        metrics=metrics,
        champion=str(champion.version) if champion is not None else None,
        champion_metrics=champion_metrics,
    )


def promote(
    name: str,
    version: str,
    gate: GateConfig,
    *,
    who: str | None = None,
    reason: str = "",
    tracking_uri: str | None = None,
) -> GateDecision:
    """Move alias ``champion`` to ``version`` if the gate passes; the old champion is kept for rollback.

    Raises:
        PromotionRefused: the gate failed (``exc.decision.reasons`` lists why); nothing changed.
        RegistryError: unknown model/version, or the version is already the champion.
    """
    decision = check_gate(name, version, gate, tracking_uri=tracking_uri)
    if decision.champion == str(version):
        raise RegistryError(f"{name} v{version} is already the champion")
    if not decision.passed:
        raise PromotionRefused(decision)
    client = client_for(tracking_uri)
    tags = {"promoted_by": user_name(who), "promoted_at": _now(), "promotion_reason": reason or "gate passed"}
    if decision.champion is not None:
        tags["previous_champion"] = decision.champion
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    log.info("%s: champion v%s -> v%s (%s)", name, decision.champion, version, tags["promoted_by"])
    return decision


@dataclass
class RollbackResult:
    name: str
    from_version: str
    to_version: str
    who: str
    reason: str


def rollback(name: str, reason: str, who: str | None = None, *, tracking_uri: str | None = None) -> RollbackResult:
    """Move ``champion`` back to the champion before it, tagging who and why on the version and the model.

    Raises:
        RegistryError: no champion, or the champion has no recorded predecessor.
    """
    if not reason.strip():
        raise RegistryError("rollback needs a reason (it is recorded in the registry)")
    client = client_for(tracking_uri)
    current = _alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = (current.tags or {}).get("previous_champion")
    if not previous:
        raise RegistryError(f"{name}: champion v{current.version} has no previous champion to roll back to")
    _get_version(client, name, previous)
    by, at = user_name(who), _now()
    for key, value in (("rolled_back_by", by), ("rolled_back_at", at), ("rollback_reason", reason)):
        client.set_model_version_tag(name, str(current.version), key, value)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_tag(
        name, "last_rollback", f"v{current.version} -> v{previous} at {at} by {by}: {reason}"
    )
    log.warning("%s: champion rolled back v%s -> v%s by %s: %s", name, current.version, previous, by, reason)
    return RollbackResult(name=name, from_version=str(current.version), to_version=previous, who=by, reason=reason)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------ URI resolver
def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` -> (NAME, None, alias); ``models:/NAME/3`` -> (NAME, "3", None).

    Raises:
        RegistryError: not one of those two forms.
    """
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if name and alias:
            return name, None, alias
    else:
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return name, version, None
    raise RegistryError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAW_RM_MODEL_CACHE", Path.home() / ".cache" / "raw_rm" / "models"))


def resolve_model_uri(uri: str, *, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download a registered model version to ``cache_dir/NAME/VERSION`` once and return that folder.

    Aliases resolve to a version first, so moving ``champion`` is seen at the next resolve while each version
    is downloaded only once. A partial download never counts: the files land in a temporary folder renamed
    into place when complete.
    """
    name, version, alias = parse_model_uri(uri)
    client = client_for(tracking_uri)
    if alias is not None:
        mv = _alias_version(client, name, alias)
        if mv is None:
            raise RegistryError(f"{uri}: {name} has no alias {alias!r}")
        version = str(mv.version)
    else:
        _get_version(client, name, version)
    source = client.get_model_version_download_uri(name, str(version))
    # NAME/VERSION alone is not unique: two MLflow stores (a quickstart's and a test's) both have "v1" of a name.
    # The artifact URI of the version is, so it keys the cache.
    digest = hashlib.sha256(f"{client.tracking_uri}|{source}".encode()).hexdigest()[:12]
    target = Path(cache_dir or default_cache_dir()) / quote(name, safe="") / f"{version}-{digest}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        # Returns the local path of the downloaded folder (a run artifact URI lands as tmp/<artifact name>).
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp), tracking_uri=client.tracking_uri
        )
        try:
            Path(local).rename(target)
        except OSError:  # another process finished first: keep theirs
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("resolved %s -> %s", uri, target)
    return target


def resolve_run_uri(uri: str, *, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """``runs:/RUN_ID/model`` -> a local copy of that run artifact folder (cached under ``cache_dir/runs``)."""
    rest = uri[len("runs:/") :].strip("/") if uri.startswith("runs:/") else ""
    run_id, _, artifact = rest.partition("/")
    if not run_id or not artifact:
        raise RegistryError(f"{uri!r}: expected runs:/RUN_ID/ARTIFACT_PATH (e.g. runs:/<id>/model)")
    target = Path(cache_dir or default_cache_dir()) / "runs" / run_id / artifact
    if target.is_dir():
        return target
    client = client_for(tracking_uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".run-", dir=target.parent))
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact, dst_path=str(tmp), tracking_uri=client.tracking_uri
        )
        Path(local).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def uri_resolver(tracking_uri: str | None = None, *, cache_dir: str | Path | None = None) -> Callable[[str], str]:
    """A resolver of ``models:/`` and ``runs:/`` URIs on one MLflow store, for
    ``RewardModelInference(uri, resolver=...)`` and ``load_for_inference(uri, resolver=...)``.

    The store is fixed when the resolver is made (None: $MLFLOW_TRACKING_URI now, else ``mlflow.tracking_uri``'s
    default), so resolvers on two stores in one process never see each other's models.
    """
    store = store_uri(tracking_uri)

    def resolve(uri: str) -> str:
        if uri.startswith("runs:/"):
            return str(resolve_run_uri(uri, tracking_uri=store, cache_dir=cache_dir))
        return str(resolve_model_uri(uri, tracking_uri=store, cache_dir=cache_dir))

    return resolve
