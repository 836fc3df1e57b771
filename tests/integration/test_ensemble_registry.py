"""An ensemble trained as parallel Ray Tune trials is ONE registered MLflow version, loadable through models:/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raw_rm.config import Config, GateConfig, apply_overrides

pytestmark = pytest.mark.integration

NAME = "rm-ensemble"
PROMPTS = ["What is 2 + 3?", "How do I bake bread?"]
RESPONSES = ["2 + 3 = 5.", "Mix flour, water and yeast, then bake."]


def test_ensemble_registered_as_one_version_and_served_by_one_uri(
    ray_session, mlflow_uri: str, tmp_path: Path, monkeypatch
) -> None:
    from raw_rm.inference import RewardModelInference
    from raw_rm.models.ensemble import EnsembleRewardModel
    from raw_rm.tracking import registry
    from raw_rm.tracking import runs as tracking
    from raw_rm.tracking.ensemble import register_ensemble
    from raw_rm.train.ensemble import train_ensemble

    monkeypatch.setenv("RAW_RM_MODEL_CACHE", str(tmp_path / "cache"))
    cfg = apply_overrides(
        Config(),
        {
            "model.backbone": "tiny-bert",
            "data.synthetic.n_prompts": 64,
            "data.val_fraction": 0.3,
            "data.max_len_tokens": 64,
            "train.epochs": 1,
            "train.batch_size": 8,
            "train.progress": False,
            "train.output_dir": str(tmp_path / "run"),
            "ensemble.members": 2,
            "ensemble.bootstrap": True,
            "tune.cpus_per_trial": 1,
            "tune.max_concurrent": 2,
            "mlflow.tracking_uri": mlflow_uri,
            "mlflow.registered_model": NAME,
        },
    )
    result = register_ensemble(cfg, train_ensemble(cfg, parallel=True))

    ens_dir = Path(result.ensemble_dir)
    record = json.loads((ens_dir / "ensemble.json").read_text())
    assert [m["dir"] for m in record["members"]] == ["member_0", "member_1"]
    assert [m["seed"] for m in record["members"]] == [0, 1]
    assert all(m["config"]["bootstrap"] for m in record["members"])
    assert set(record["metadata"]["reference"]) == {"reward", "length"}  # drift references of the ensemble mean
    assert record["metadata"]["temperature"] == pytest.approx(
        result.metrics["temperature"]
    )  # saved by the registry eval
    assert {"accuracy", "ece"} <= set(result.metrics)

    versions = registry.list_versions(NAME, tracking_uri=mlflow_uri)
    assert [v.version for v in versions] == ["1"] and versions[0].aliases == ["candidate"]
    tags = versions[0].tags
    members = json.loads(tags["ensemble_members"])
    assert (tags["ensemble"], tags["ensemble_size"]) == ("true", "2")
    assert [m["dir"] for m in members] == ["member_0", "member_1"]
    client = tracking.client_for(mlflow_uri)
    for m in members:  # each member's own MLflow run, a child of the ensemble's run
        run = client.get_run(m["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
        assert "val_accuracy" in run.data.metrics
    assert [m["run_id"] for m in members] == [m["run_id"] for m in record["members"]]

    resolver = registry.uri_resolver(mlflow_uri, cache_dir=tmp_path / "model_cache")
    served = RewardModelInference(f"models:/{NAME}@candidate", resolver=resolver, cache_size=0)
    assert isinstance(served.model, EnsembleRewardModel) and served.model.num_members == 2
    local = RewardModelInference(str(ens_dir), cache_size=0)
    np.testing.assert_allclose(
        served.batch_predict_members(PROMPTS, RESPONSES), local.batch_predict_members(PROMPTS, RESPONSES), atol=1e-6
    )
    assert served.batch_predict_members(PROMPTS, RESPONSES).shape == (2, 2)

    decision = registry.promote(NAME, "1", GateConfig(), tracking_uri=mlflow_uri)  # the whole ensemble becomes champion
    assert decision.passed
    assert registry.show(NAME, tracking_uri=mlflow_uri).aliases == {"candidate": "1", "champion": "1"}
