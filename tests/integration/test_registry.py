"""MLflow registry on a real SQLite store: registration, aliases, the promotion gate, rollback, models:/ URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from raw_rm.config import Config, GateConfig, apply_overrides

pytestmark = pytest.mark.integration

NAME = "rm-test"


@pytest.fixture()
def cfg(mlflow_uri: str, tmp_path: Path) -> Config:
    return apply_overrides(
        Config(),
        {"mlflow.tracking_uri": mlflow_uri, "mlflow.registered_model": NAME, "train.output_dir": str(tmp_path / "run")},
    )


def _trained(cfg: Config, tmp_path: Path, tag: str, accuracy: float, ece: float) -> str:
    """One tracked run whose 'model' is a folder holding ``tag``; registered with its gate metrics."""
    from raw_rm.tracking import registry
    from raw_rm.tracking.runs import tracking

    model_dir = tmp_path / f"model-{tag}"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text(tag)
    with tracking(cfg, run_name=tag) as run:
        run.log_metrics({"accuracy": accuracy, "ece": ece}, prefix="eval.")
        run.log_model(model_dir)
    return registry.register_version(run.run_id, "model", NAME, {"note": tag}, tracking_uri=cfg.mlflow.tracking_uri)


def test_register_sets_candidate_alias_and_lineage(cfg: Config, tmp_path: Path) -> None:
    from raw_rm.tracking import registry
    from raw_rm.tracking import runs as tracking

    assert _trained(cfg, tmp_path, "a", 0.80, 0.05) == "1"
    assert _trained(cfg, tmp_path, "b", 0.85, 0.04) == "2"
    info = registry.show(NAME, tracking_uri=cfg.mlflow.tracking_uri)
    assert info.aliases == {"candidate": "2"}
    v2, v1 = info.versions
    assert (v2.version, v2.aliases, v1.aliases) == ("2", ["candidate"], [])
    # gate metrics come from the run's eval.* metrics (no accuracy/ece tags were given)
    assert v2.metrics == {"accuracy": 0.85, "ece": 0.04}
    assert v2.data_fingerprint == tracking.source_fingerprint(cfg.data)
    assert v2.data_fingerprint.startswith("synthetic:") and len(v2.data_fingerprint) == len("synthetic:") + 64
    assert v2.experiment.startswith("raw_rm (") and v2.base_model == "minilm" and v2.run_id
    # the experiment's artifacts live beside the SQLite file, not in the working directory
    assert v2.source.startswith((Path(cfg.mlflow.tracking_uri[len("sqlite:///") :]).parent / "artifacts").as_uri())


def test_promotion_gate_refuses_worse_model_and_rollback_restores(cfg: Config, tmp_path: Path) -> None:
    from raw_rm.tracking import registry

    uri = cfg.mlflow.tracking_uri
    v1 = _trained(cfg, tmp_path, "good", 0.80, 0.05)
    v2 = _trained(cfg, tmp_path, "worse", 0.70, 0.03)
    v3 = _trained(cfg, tmp_path, "better", 0.90, 0.04)
    gate = GateConfig(min_accuracy=0.6, max_ece=0.1, no_worse_than_champion=True)

    registry.promote(NAME, v1, gate, who="alice", tracking_uri=uri)
    with pytest.raises(registry.PromotionRefused) as refused:
        registry.promote(NAME, v2, gate, tracking_uri=uri)
    assert str(refused.value) == "rm-test v2: promotion refused: accuracy 0.7000 < champion v1 accuracy 0.8000"
    with pytest.raises(registry.PromotionRefused, match=r"ece 0\.0400 > gate\.max_ece 0\.0300"):
        registry.promote(NAME, v3, GateConfig(max_ece=0.03), tracking_uri=uri)
    assert registry.show(NAME, tracking_uri=uri).aliases == {"candidate": "3", "champion": "1"}

    registry.promote(NAME, v3, gate, who="bob", reason="better held-out accuracy", tracking_uri=uri)
    info = registry.show(NAME, tracking_uri=uri)
    assert info.aliases == {"candidate": "3", "champion": "3"}
    promoted = info.versions[0]
    assert (promoted.tags["previous_champion"], promoted.tags["promoted_by"]) == ("1", "bob")

    back = registry.rollback(NAME, "regression in production", "carol", tracking_uri=uri)
    assert (back.from_version, back.to_version) == ("3", "1")
    info = registry.show(NAME, tracking_uri=uri)
    assert info.aliases["champion"] == "1"
    demoted = info.versions[0]
    assert (demoted.tags["rolled_back_by"], demoted.tags["rollback_reason"]) == ("carol", "regression in production")
    assert info.tags["last_rollback"].startswith("v3 -> v1 at ")
    assert info.tags["last_rollback"].endswith(" by carol: regression in production")
    # v1 was the first champion: nothing before it
    with pytest.raises(
        registry.RegistryError, match=r"^rm-test: champion v1 has no previous champion to roll back to$"
    ):
        registry.rollback(NAME, "again", "carol", tracking_uri=uri)


def test_min_accuracy_and_unknown_metric(cfg: Config, tmp_path: Path) -> None:
    from raw_rm.tracking import registry

    uri = cfg.mlflow.tracking_uri
    v1 = _trained(cfg, tmp_path, "weak", 0.55, 0.05)
    decision = registry.check_gate(NAME, v1, GateConfig(min_accuracy=0.6), tracking_uri=uri)
    assert (decision.passed, decision.reasons) == (False, ["accuracy 0.5500 < gate.min_accuracy 0.6000"])
    with pytest.raises(registry.RegistryError, match=r"^rm-test: no version 7 \(versions: 1\)$"):
        registry.promote(NAME, "7", GateConfig(), tracking_uri=uri)
    with pytest.raises(registry.RegistryError, match=r"^rm-test has no champion to roll back$"):
        registry.rollback(NAME, "why", "me", tracking_uri=uri)


def test_models_uri_resolves_alias_and_version_to_cached_dir(cfg: Config, tmp_path: Path) -> None:
    from raw_rm.tracking import registry

    uri = cfg.mlflow.tracking_uri
    _trained(cfg, tmp_path, "first", 0.8, 0.05)
    _trained(cfg, tmp_path, "second", 0.9, 0.05)
    cache = tmp_path / "cache"
    path = registry.resolve_model_uri(f"models:/{NAME}@candidate", tracking_uri=uri, cache_dir=cache)
    assert path.parent == cache / NAME and path.name.startswith("2-")
    assert (path / "weights.txt").read_text() == "second"
    first = registry.resolve_model_uri(f"models:/{NAME}/1", tracking_uri=uri, cache_dir=cache)
    assert (first / "weights.txt").read_text() == "first"
    with pytest.raises(registry.RegistryError, match=r"has no alias 'champion'"):
        registry.resolve_model_uri(f"models:/{NAME}@champion", tracking_uri=uri, cache_dir=cache)
    with pytest.raises(registry.RegistryError, match=r"expected models:/NAME@alias or models:/NAME/VERSION"):
        registry.parse_model_uri("models:/justaname")


def test_registry_cli_list_promote_refusal_and_rollback(cfg: Config, tmp_path: Path, capsys) -> None:
    from raw_rm.cli import main

    uri = cfg.mlflow.tracking_uri
    _trained(cfg, tmp_path, "good", 0.80, 0.05)
    _trained(cfg, tmp_path, "worse", 0.70, 0.03)
    assert main(["registry", "promote", NAME, "1", "--tracking-uri", uri, "--who", "alice"]) == 0
    assert capsys.readouterr().out == f"{NAME}: champion -> v1 (was none); gate passed: accuracy=0.8000, ece=0.0500\n"

    assert main(["registry", "promote", NAME, "2", "gate.min_accuracy=0.75", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"raw-rm registry: {NAME} v2: promotion refused: accuracy 0.7000 < gate.min_accuracy 0.7500; "
        "accuracy 0.7000 < champion v1 accuracy 0.8000",
        "  candidate v2: accuracy=0.7000, ece=0.0300; current champion: v1 accuracy=0.8000, ece=0.0500",
    ]

    assert main(["registry", "list", NAME, "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{NAME}: 2 version(s)"
    assert lines[1].split() == [
        "version",
        "aliases",
        "accuracy",
        "ece",
        "created",
        "(UTC)",
        "run",
        "data",
        "experiment",
        "base",
        "model",
    ]
    assert lines[3].split()[:4] == ["2", "candidate", "0.7000", "0.0300"]
    assert lines[4].split()[:4] == ["1", "champion", "0.8000", "0.0500"]

    assert main(["registry", "rollback", NAME, "--tracking-uri", uri, "--reason", "bad", "--who", "bob"]) == 1
    assert capsys.readouterr().err == f"raw-rm registry: {NAME}: champion v1 has no previous champion to roll back to\n"
    assert main(["registry", "show", "nope", "--tracking-uri", uri]) == 1
    assert capsys.readouterr().err == "raw-rm registry: registered model 'nope' does not exist\n"


def test_same_name_and_version_in_two_stores_are_cached_apart(tmp_path: Path) -> None:
    # Regression: the cache was keyed by NAME/VERSION only, so a second store's v1 served the first store's model.
    from raw_rm.tracking import registry

    cache = tmp_path / "cache"
    texts = []
    for store in ("a", "b"):
        cfg = apply_overrides(
            Config(),
            {
                "mlflow.tracking_uri": f"sqlite:///{tmp_path / store}.db",
                "mlflow.registered_model": NAME,
                "train.output_dir": str(tmp_path / store),
            },
        )
        _trained(cfg, tmp_path, f"weights of store {store}", 0.8, 0.05)
        path = registry.resolve_model_uri(f"models:/{NAME}/1", tracking_uri=cfg.mlflow.tracking_uri, cache_dir=cache)
        texts.append((path / "weights.txt").read_text())
    assert texts == ["weights of store a", "weights of store b"]
