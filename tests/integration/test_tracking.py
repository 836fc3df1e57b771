"""MLflow tracking around `train_local`: one run with config params, rank-0 step metrics, lineage, eval report, model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raw_rm.config import load_config

pytestmark = pytest.mark.integration


def test_tracked_local_training_logs_everything_and_registers(mlflow_uri: str, tmp_path: Path, monkeypatch) -> None:
    from raw_rm.cli import main
    from raw_rm.inference import RewardModelInference
    from raw_rm.tracking import registry
    from raw_rm.tracking import runs as tracking
    from raw_rm.train.local import train_local

    cfg = load_config(
        None,
        [
            "model.backbone=tiny-bert",
            "data.synthetic.n_prompts=64",
            "data.max_len_tokens=48",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.log_every_steps=1",
            "train.progress=false",
            "train.precision=fp32",
            "train.num_threads=1",
            f"train.output_dir={tmp_path / 'run'}",
            f"mlflow.tracking_uri={mlflow_uri}",
            "mlflow.registered_model=local-rm",
        ],
    )
    result = registry.tracked_training(cfg, train_local)
    assert result.model_version == "1"
    client = tracking.client_for(mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["train.max_steps"], params["model.backbone"], params["data.train_path"]) == (
        "3",
        "tiny-bert",
        "null",
    )
    assert params["model.aspects"] == '["helpfulness", "harmlessness", "honesty"]'
    tags = run.data.tags
    assert tags["data_fingerprint"] == tracking.source_fingerprint(cfg.data) and tags["base_model"] == "tiny-bert"
    assert tags["git_commit"] == tracking.git_commit()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert 0.0 <= run.data.metrics["eval.accuracy"] <= 1.0 and "eval.sets.validation.accuracy" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model", "eval_report", "config.json"}

    # the registered version carries the gate metrics (from the eval report) and resolves to a loadable model
    (version,) = registry.list_versions("local-rm", tracking_uri=mlflow_uri)
    assert version.metrics["accuracy"] == pytest.approx(run.data.metrics["eval.accuracy"])
    assert version.metrics["ece"] == pytest.approx(run.data.metrics["eval.ece"])
    resolver = registry.uri_resolver(mlflow_uri, cache_dir=tmp_path / "cache")
    rm = RewardModelInference("models:/local-rm@candidate", resolver=resolver)
    local = RewardModelInference(result.model_dir)
    assert rm.predict_reward("Q?", "An answer.") == pytest.approx(local.predict_reward("Q?", "An answer."), abs=1e-6)
    # the logged model carries the temperature fitted during evaluation
    assert rm.metadata.temperature == pytest.approx(run.data.metrics["eval.model.temperature"])

    # the CLI takes the URI wherever a model path goes, on the store of $MLFLOW_TRACKING_URI; another store's
    # resolver made in the same process (a default store without this model) does not get in the way
    other = registry.uri_resolver(f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}", cache_dir=tmp_path / "other-cache")
    with pytest.raises(
        registry.RegistryError, match=r"^models:/local-rm@candidate: local-rm has no alias 'candidate'$"
    ):
        other("models:/local-rm@candidate")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("RAW_RM_MODEL_CACHE", str(tmp_path / "cli-cache"))
    src, out = tmp_path / "in.jsonl", tmp_path / "scores" / "out.jsonl"
    src.write_text(json.dumps({"prompt": "Q?", "response": "An answer."}) + "\n")
    assert main(["score", "models:/local-rm@candidate", "--input", str(src), "--output", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["reward"] == pytest.approx(local.predict_reward("Q?", "An answer."), abs=1e-6)
    # an alias the store does not have is the user's mistake: exit 2 with the reason, no traceback, no output file
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "models:/local-rm@champion", "--input", str(src), "--output", str(tmp_path / "none.jsonl")])
    assert exit_info.value.code == 2 and not (tmp_path / "none.jsonl").exists()


def test_tracking_marks_the_run_failed_when_training_raises(mlflow_uri: str, tmp_path: Path) -> None:
    from raw_rm.tracking import registry
    from raw_rm.tracking import runs as tracking

    cfg = load_config(None, [f"mlflow.tracking_uri={mlflow_uri}", f"train.output_dir={tmp_path}"])

    def broken(cfg, callbacks):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="^boom$"):
        registry.tracked_training(cfg, broken)
    client = tracking.client_for(mlflow_uri)
    exp = client.get_experiment_by_name("raw_rm")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert exp.artifact_location == (tmp_path / "artifacts").as_uri()
