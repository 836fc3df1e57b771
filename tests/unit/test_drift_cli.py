"""`raw-rm drift`: PSI / KS near 0 for the data the reference was built from, large for shifted data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raw_rm.cli import drift
from raw_rm.config import ModelConfig
from raw_rm.data.records import PreferencePair
from raw_rm.models import build_model, save_model
from raw_rm.models.backbones import load_tokenizer
from raw_rm.reference import fit_reference, record_lengths
from raw_rm.uncertainty import ReferenceDistribution

WORDS = "the cat sat on a mat while birds sang in the old tall tree near our quiet house".split()


def pairs(n: int, *, extra_words: int = 0, seed: int = 0) -> list[PreferencePair]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):

        def text() -> str:
            return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)) + extra_words))

        out.append(PreferencePair(prompt=f"question {i}: {text()}?", chosen=text(), rejected=text()))
    return out


class FakeInference:
    """Reward = 0.1 per word of the response: drift in length is drift in reward."""

    source = "fake"

    def __init__(self, tokenizer, reference: dict) -> None:
        self.tokenizer = tokenizer
        self.metadata = argparse.Namespace(reference=reference)

    def batch_predict(self, prompts, responses):
        return np.array([0.1 * len(r.split()) for r in responses])


def test_same_data_gives_zero_and_shifted_data_large_drift() -> None:
    tokenizer = load_tokenizer("tiny-bert")
    base = pairs(500)
    rewards = [0.1 * len(t.split()) for p in base for t in (p.chosen, p.rejected)]
    reference = {
        "reward": ReferenceDistribution.from_sample(rewards).to_dict(),
        "length": ReferenceDistribution.from_sample(record_lengths(tokenizer, base, max_len_tokens=256)).to_dict(),
    }
    rm = FakeInference(tokenizer, reference)

    def report(records):
        prompts = [p.prompt for p in records for _ in (0, 1)]
        texts = [t for p in records for t in (p.chosen, p.rejected)]
        return drift.drift_report(
            rm, prompts, texts, [[2 * i, 2 * i + 1] for i in range(len(records))], max_len_tokens=256
        )

    same = report(base)
    for name in ("reward", "length"):
        assert same[name]["psi"] == pytest.approx(0.0, abs=1e-12)
        assert same[name]["ks"] == pytest.approx(0.0, abs=1e-12)
        assert same[name]["verdict"] == "stable"
    fresh = report(pairs(500, seed=1))  # same distribution, new sample: sampling noise only
    assert fresh["reward"]["psi"] < 0.25 and fresh["length"]["psi"] < 0.25
    shifted = report(pairs(200, extra_words=15, seed=2))  # every response 15 words longer than any reference one
    for name in ("reward", "length"):
        assert shifted[name]["psi"] > 2.0 and shifted[name]["ks"] > 0.9
        assert shifted[name]["verdict"] == "large shift"
    assert "large shift" in drift.format_table(shifted)


def test_drift_cli_on_a_saved_model(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert"))
    model.eval()
    base = pairs(40)
    fit_reference(model, tokenizer, base, max_len_tokens=256)
    model_dir = save_model(model, tokenizer, tmp_path / "model")
    for name, records in (("same", base), ("long", pairs(40, extra_words=25, seed=3))):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(
                json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in records
            )
        )
    args = argparse.Namespace(
        model=str(model_dir),
        data=str(tmp_path / "same.jsonl"),
        out=str(tmp_path / "out"),
        max_len_tokens=256,
        limit=None,
        batch_size=16,
    )
    assert drift.run(args) == 0
    same = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert same["n_texts"] == 80 and same["n_records"] == 40
    assert same["reward"]["psi"] < 1e-6 and same["length"]["psi"] < 1e-6
    assert (tmp_path / "out" / "drift.png").stat().st_size > 1000
    args.data = str(tmp_path / "long.jsonl")
    assert drift.run(args) == 0
    long = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert long["length"]["psi"] > 2.0 and long["length"]["ks"] > 0.9
    assert "length" in capsys.readouterr().out


def test_model_without_reference_is_refused(tmp_path: Path) -> None:
    rm = FakeInference(load_tokenizer("tiny-bert"), {})
    with pytest.raises(ValueError, match=r"fake: the model stores no reference reward / length distribution"):
        drift.drift_report(rm, ["p"], ["r"], [[0]], max_len_tokens=256)
