"""Length bias: the ODIN length head (trained, never saved), length metrics, and the batch fields the terms read."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raw_rm import metrics as M
from raw_rm.config import ModelConfig, load_config
from raw_rm.data.batching import PairCollator
from raw_rm.data.records import PreferencePair
from raw_rm.data.splits import prompt_bucket
from raw_rm.models import build_model, load_model, save_model
from tests.unit.model_features import PROMPTS, RESPONSES, encode_features


@pytest.mark.parametrize("pooling", ["auto", "mean"])  # Hugging Face layout and raw_rm layout
def test_length_head_is_trained_output_but_never_saved(tmp_path, pooling: str) -> None:
    torch.manual_seed(0)
    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert", pooling=pooling, length_head=True))
    model.eval()
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    with torch.no_grad():
        out = model(**features)
    assert out.length_rewards is not None and out.length_rewards.shape == out.rewards.shape == (2,)
    save_model(model, tokenizer, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.length_head is None and loaded.model_cfg.length_head is False
    with torch.no_grad():
        again = loaded(**features)
    assert again.length_rewards is None
    assert torch.allclose(again.rewards, out.rewards, atol=1e-5)  # the saved model scores without the length head
    assert model.length_head is not None  # saving left the training model whole


def test_length_head_reads_the_reward_heads_input_and_orthogonality_is_the_cosine() -> None:
    torch.manual_seed(0)
    model, tokenizer = build_model(ModelConfig(backbone="tiny-bert", length_head=True))
    model.eval()
    features = encode_features(tokenizer, PROMPTS, RESPONSES, "concat")
    seen = []
    hook = model.hf.classifier.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        out = model(**features)
    hook.remove()
    expected = seen[0] @ model.length_head.weight[0] + model.length_head.bias[0]
    assert torch.allclose(out.length_rewards, expected, atol=1e-6)
    w_q, w_l = model.hf.classifier.weight[0], model.length_head.weight[0]
    cos = float((w_q @ w_l / (w_q.norm() * w_l.norm())).detach())
    assert model.head_orthogonality().item() == pytest.approx(abs(cos), abs=1e-6)
    plain, _ = build_model(ModelConfig(backbone="tiny-bert"))
    with pytest.raises(ValueError, match=r"head_orthogonality: the model has no length head"):
        plain.head_orthogonality()


def test_pair_collator_gives_response_tokens_and_the_calibration_slice() -> None:
    _, tokenizer = build_model(ModelConfig(backbone="tiny-bert"))
    pairs = [PreferencePair(prompt=f"question {i}", chosen="a b c d", rejected="yes") for i in range(40)]
    batch = PairCollator(tokenizer, max_len_tokens=6, input_kind="concat", calibration_fraction=0.25)(pairs)
    n_chosen = len(tokenizer("a b c d", add_special_tokens=False)["input_ids"])
    n_rejected = len(tokenizer("yes", add_special_tokens=False)["input_ids"])
    assert n_chosen == 4 and n_rejected == 1
    # lengths before truncation (max_len_tokens=6 cuts the chosen rows)
    assert batch["response_tokens"].tolist() == [4.0] * 40 + [1.0] * 40
    expected = [prompt_bucket(f"question {i}", "raw_rm-calibration") < 0.25 for i in range(40)]
    assert batch["calibration"].tolist() == expected and 0 < sum(expected) < 40
    assert "calibration" not in PairCollator(tokenizer, max_len_tokens=6)(pairs)


def test_length_bias_by_hand() -> None:
    chosen, rejected = [3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 0.0, 1.0]
    len_c, len_r = [100, 100, 50, 10], [95, 50, 50, 40]
    probed = [5.0, 5.0, 1.0, -1.0]
    out = M.length_bias(chosen, rejected, len_c, len_r, probed_rejected=probed, n_boot=200)
    # matched (|diff| <= 10% of the longer): pairs 0 (5 <= 10) and 2 (0): both right
    assert out["matched_n"] == 2 and out["matched_accuracy"] == 1.0
    assert out["chosen_longer_share"] == 0.5
    # clean correct: T F T F; probed correct: F F T T -> accuracy change 0
    assert out["verbosity_change"] == 0.0
    rewards, lengths = chosen + rejected, len_c + len_r
    from scipy import stats

    assert out["reward_length_spearman"] == pytest.approx(stats.spearmanr(rewards, lengths).statistic)
    assert out["reward_length_pearson"] == pytest.approx(stats.pearsonr(rewards, lengths).statistic)
    none = M.length_bias([1.0], [0.0], [100], [10])
    assert none["matched_n"] == 0 and math.isnan(none["matched_accuracy"]) and "verbosity_change" not in none


def test_paired_accuracy_change_interval() -> None:
    before = np.array([True] * 50 + [False] * 50)
    after = np.array([True] * 100)
    out = M.paired_accuracy_change(before, after, n_boot=500)
    assert out["change"] == 0.5 and out["significant"] == 1.0 and 0.35 < out["ci_low"] < 0.5 < out["ci_high"]
    same = M.paired_accuracy_change(before, before, n_boot=50)
    assert same == {"change": 0.0, "ci_low": 0.0, "ci_high": 0.0, "significant": 0.0}


def test_cross_fit_temperature_by_construction() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=2000)
    # true P(chosen wins) = σ(z / 3): the model is overconfident by T = 3; orient each pair by its label
    delta = np.where(rng.random(2000) < 1 / (1 + np.exp(-z / 3)), z, -z)
    fit = M.cross_fit_temperature(delta, current=1.0, folds=5, n_boot=50)
    assert fit["ci_low"] < 3.0 < fit["ci_high"] and fit["improves"] and fit["folds"] == 5 and fit["n"] == 2000
    assert fit["nll_current"] == pytest.approx(M.pair_nll(delta, 1.0))
    at_truth = M.cross_fit_temperature(delta, current=3.0, folds=5, n_boot=5)
    assert at_truth["nll_current"] == pytest.approx(M.pair_nll(delta, 3.0))
    with pytest.raises(ValueError, match="cross_fit_temperature: 3 pairs cannot make 5 folds"):
        M.cross_fit_temperature([1.0, 2.0, -1.0])


def test_trainer_learns_temperature_and_odin_and_refuses_terms_on_multihead(tmp_path) -> None:
    from raw_rm.config import ConfigError
    from raw_rm.train.local import train_local

    base = [
        "model.backbone=tiny-bert",
        "data.synthetic.n_prompts=60",
        "train.progress=false",
        "train.batch_size=8",
        "data.max_len_tokens=48",
    ]
    cfg = load_config(
        None,
        [
            *base,
            f"train.output_dir={tmp_path / 'a'}",
            "loss.learned_temperature=true",
            "loss.temperature_lr=0.5",
            "loss.calibration_fraction=0.3",
        ],
    )
    result = train_local(cfg)
    saved = load_model(result.model_dir)[0].metadata.temperature
    assert saved != 1.0  # T moved (lr 0.5) and was stored as the model's temperature
    cfg = load_config(
        None,
        [
            *base,
            f"train.output_dir={tmp_path / 'b'}",
            "model.length_head=true",
            "loss.length_corr_coef=1.0",
            "loss.orthogonal_coef=0.1",
        ],
    )
    loaded = load_model(train_local(cfg).model_dir)[0]
    assert loaded.length_head is None and loaded.model_cfg.length_head is False
    cfg = load_config(
        None, [*base, f"train.output_dir={tmp_path / 'c'}", "model.arch=multihead", "loss.brier_coef=1.0"]
    )
    with pytest.raises(
        ConfigError,
        match=r"model.arch=multihead trains 5 heads each on its own loss: use "
        r"model.arch=concat",
    ):
        train_local(cfg)
