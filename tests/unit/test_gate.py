"""The one gate evaluation: the promotion gate and `raw-rm eval` fit the temperature on the same calibration pairs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from raw_rm.cli import main


def bucket(prompt: str, salt: str) -> float:
    """sha256(salt + prompt) as a number in [0, 1): the prompt-hash split, written out independently."""
    return int.from_bytes(hashlib.sha256((salt + prompt).encode()).digest()[:8], "big") / 2.0**64


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from raw_rm.config import ModelConfig
    from raw_rm.models import build_model, save_model

    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert"))
    return save_model(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def test_gate_and_cli_eval_fit_the_temperature_on_the_same_calibration_pairs(tiny_model_dir, tmp_path):
    from raw_rm import metrics as M
    from raw_rm.config import load_config
    from raw_rm.eval.gate import evaluate_for_gate
    from raw_rm.inference import RewardModelInference

    rows = [
        {"prompt": f"question {i}?", "chosen": f"A careful answer {i}.", "rejected": f"No {i % 7}."} for i in range(160)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = ["data.val_fraction=0.5", "data.max_len_tokens=32", "eval.n_boot=20"]
    cfg = load_config(None, [f"data.train_path={data}", *overrides])

    gate = evaluate_for_gate(cfg, tiny_model_dir, save_temperature=False)
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--heldout",
                "--no-probes",
                "--out",
                str(out),
                *overrides,
            ]
        )
        == 0
    )
    cli = json.loads((out / "metrics.json").read_text())

    # validation = the prompts training held out (salt data.split_seed); calibration = those whose hash with
    # eval.calibration_salt falls below eval.calibration_fraction
    held_out = [r for r in rows if bucket(r["prompt"], "raw_rm") < 0.5]
    calibration = [r for r in held_out if bucket(r["prompt"], "raw_rm/calibration") < 0.5]
    assert 2 <= len(calibration) < len(held_out) - 2
    rm = RewardModelInference(str(tiny_model_dir), max_len_tokens=32)
    chosen = rm.batch_predict([r["prompt"] for r in calibration], [r["chosen"] for r in calibration])
    rejected = rm.batch_predict([r["prompt"] for r in calibration], [r["rejected"] for r in calibration])
    expected_t = M.fit_temperature(np.asarray(chosen) - np.asarray(rejected))
    for metrics, name in ((gate.metrics, "validation"), (cli, "test")):
        assert metrics["model"]["temperature_source"] == f"{len(calibration)} validation pairs, cross-fitted"
        assert metrics["model"]["temperature"] == pytest.approx(expected_t, rel=1e-4)
        assert metrics["sets"][name]["n_pairs"] == len(held_out) - len(calibration)


def test_a_split_too_small_is_refused_or_falls_back_as_asked():
    from raw_rm.config import EvalConfig
    from raw_rm.data.records import PreferencePair
    from raw_rm.eval.gate import evaluate_sets

    class Fake:  # rewards: chosen 1, rejected 0
        def batch_predict(self, prompts, responses):
            return np.array([1.0 if r == "c" else 0.0 for r in responses])

    pairs = [PreferencePair(prompt=f"p{i}", chosen="c", rejected="r") for i in range(3)]
    sets = {"pairs": pairs, "groups": [], "ratings": []}
    ec = EvalConfig(n_boot=5)
    n_fit = sum(bucket(p.prompt, ec.calibration_salt) < 0.5 for p in pairs)
    with pytest.raises(ValueError) as info:
        evaluate_sets(Fake(), sets, ec, name="v", run_probes=False)
    assert str(info.value) == (
        f"eval.calibration_fraction=0.5: the split of 3 pairs left {3 - n_fit} to evaluate and "
        f"{n_fit} to fit T; give more data, another fraction or separate calibration pairs"
    )
    report = evaluate_sets(Fake(), sets, ec, name="v", run_probes=False, small_split="fit_on_evaluated")
    assert report.metrics["sets"]["v"]["n_pairs"] == 3
    assert report.metrics["model"]["temperature_source"] == "3 validation pairs, cross-fitted"
