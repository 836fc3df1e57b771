"""THE recipe (raw_rm.train.recipe): what it saves, the gate evaluation on request, the variation passed in."""

from __future__ import annotations

import json

import pytest

from raw_rm.config import load_config

TINY = [
    "model.backbone=tiny-bert",
    "data.synthetic.n_prompts=80",
    "data.val_fraction=0.25",
    "data.max_len_tokens=32",
    "train.batch_size=8",
    "train.max_steps=2",
    "train.precision=fp32",
    "train.progress=false",
    "eval.n_boot=20",
]


def test_train_local_saves_the_model_and_runs_the_gate_evaluation_when_asked(tmp_path) -> None:
    from raw_rm.data import load_train_val
    from raw_rm.models import load_model
    from raw_rm.train.local import train_local
    from raw_rm.train.recipe import records_fingerprint

    cfg = load_config(None, [*TINY, f"train.output_dir={tmp_path / 'run'}"])
    result = train_local(cfg, evaluate=True)

    assert result.model_dir == str(tmp_path / "run" / "model")
    model, tokenizer = load_model(result.model_dir)
    train, val, _ = load_train_val(cfg, tokenizer=tokenizer)
    assert model.metadata.data_fingerprint == records_fingerprint(train)
    assert (result.metrics["n_train"], result.metrics["n_val"], result.metrics["steps"]) == (len(train), len(val), 2)
    # the gate evaluation: T fitted on the calibration split is stored in the saved model, its report beside it
    assert model.metadata.temperature == pytest.approx(result.metrics["eval.temperature"])
    report = json.loads((tmp_path / "run" / "eval_report" / "metrics.json").read_text())
    assert report["sets"]["validation"]["accuracy"] == pytest.approx(result.metrics["eval.accuracy"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(result.metrics)


def test_the_variation_comes_in_as_arguments(tmp_path) -> None:
    from raw_rm.data.synthetic import generate
    from raw_rm.models import build_model, load_model
    from raw_rm.train.recipe import records_fingerprint, run_recipe

    cfg = load_config(None, [*TINY, f"train.output_dir={tmp_path / 'run'}"])
    pairs = generate(cfg.data.synthetic).pairs
    built, attached = [], []

    def factory(c):
        built.append(c)
        return build_model(c.model)

    class Attach:
        def attach(self, trainer) -> None:
            attached.append(trainer)

    run = run_recipe(
        cfg,
        records=(pairs[:24], pairs[24:30]),
        model_factory=factory,
        callbacks=[Attach()],
        model_dir=tmp_path / "elsewhere" / "model",
    )
    assert built == [cfg] and attached == [run.trainer]
    assert (run.metrics["n_train"], run.metrics["n_val"]) == (24.0, 6.0) and run.data_report == ""
    assert run.model_dir == tmp_path / "elsewhere" / "model"
    assert load_model(run.model_dir)[0].metadata.data_fingerprint == records_fingerprint(pairs[:24])
    assert (tmp_path / "elsewhere" / "metrics.json").is_file() and not (tmp_path / "run" / "model").exists()
