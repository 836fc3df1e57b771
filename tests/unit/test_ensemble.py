"""Ensemble folders: saved and loaded as one model, members z-scored per member, shared tokenizer enforced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_features import PROMPTS, RESPONSES, encode_features

from raw_rm.config import ModelConfig
from raw_rm.inference import RewardModelInference
from raw_rm.models import build_model, load_model, save_model
from raw_rm.models.ensemble import EnsembleRewardModel, is_ensemble_dir, load_ensemble, save_ensemble

STATS = [(0.5, 2.0), (-1.0, 0.5)]  # (reward_mean, reward_std) of the two members


def make_member(seed: int, arch: str = "concat"):
    torch.manual_seed(seed)
    model, tokenizer = build_model(ModelConfig(arch=arch, backbone="tiny-bert"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct weights per member (the tiny backbone itself is seeded the same way)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    dirs = []
    for i, (mean, std) in enumerate(STATS):
        model, tokenizer = make_member(i)
        model.metadata.reward_mean, model.metadata.reward_std = mean, std
        dirs.append(save_model(model, tokenizer, root / f"m{i}"))
    return dirs


@pytest.fixture(scope="module")
def expected(members: list[Path]) -> np.ndarray:
    """(N, K) z-scored rewards of each member loaded on its own: (r_k - reward_mean_k) / reward_std_k."""
    cols = []
    for d, (mean, std) in zip(members, STATS):
        model, tokenizer = load_model(d)
        with torch.no_grad():
            cols.append(
                (model(**encode_features(tokenizer, PROMPTS, RESPONSES, "concat")).rewards.numpy() - mean) / std
            )
    return np.stack(cols, axis=1)


@pytest.fixture(scope="module")
def ensemble(members: list[Path], tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ensemble")
    return save_ensemble(root / "ens", members, {"members": [{"seed": 0, "run_id": "a"}, {"seed": 1, "run_id": "b"}]})


def test_saved_ensemble_loads_as_one_model_with_z_scored_members(
    ensemble: Path, members: list[Path], expected: np.ndarray
) -> None:
    assert is_ensemble_dir(ensemble) and not is_ensemble_dir(members[0])
    record = json.loads((ensemble / "ensemble.json").read_text())
    assert [(m["dir"], m["seed"], m["run_id"]) for m in record["members"]] == [
        ("member_0", 0, "a"),
        ("member_1", 1, "b"),
    ]
    assert record["metadata"]["base_model"] == "tiny-bert"
    model, tokenizer = load_model(ensemble)
    assert isinstance(model, EnsembleRewardModel) and not model.training
    assert model.num_members == 2 and model.input_kind == "concat"
    with torch.no_grad():
        out = model(**encode_features(tokenizer, PROMPTS, RESPONSES, "concat"))
    assert tuple(out.members.shape) == (len(PROMPTS), 2)
    np.testing.assert_allclose(out.members.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.rewards.numpy(), expected.mean(1), atol=1e-5)

    # save_model on a loaded ensemble: in place only ensemble.json changes (eval's save_temperature does this) ...
    model.metadata.temperature = 2.5
    save_model(model, tokenizer, ensemble)
    assert sorted(p.name for p in ensemble.iterdir()) == ["ensemble.json", "member_0", "member_1"]
    assert json.loads((ensemble / "ensemble.json").read_text())["metadata"]["temperature"] == 2.5
    # ... elsewhere, every member is written out again
    copy = save_model(model, tokenizer, ensemble.parent / "copy")
    assert sorted(p.name for p in copy.iterdir() if not p.name.startswith("tok") and p.suffix != ".json") == [
        "member_0",
        "member_1",
    ]
    assert load_ensemble(copy)[0].metadata.temperature == 2.5


def test_inference_on_an_ensemble_dir(ensemble: Path, expected: np.ndarray) -> None:
    rm = RewardModelInference(str(ensemble), cache_size=0)
    np.testing.assert_allclose(rm.batch_predict_members(PROMPTS, RESPONSES), expected, atol=1e-5)
    np.testing.assert_allclose(rm.batch_predict(PROMPTS, RESPONSES), expected.mean(1), atol=1e-5)


def test_members_with_different_tokenizers_are_refused(members: list[Path], tmp_path: Path) -> None:
    model, tokenizer = make_member(2)
    tokenizer.add_tokens(["<extra_token>"])
    other = save_model(model, tokenizer, tmp_path / "other")
    with pytest.raises(
        ValueError,
        match=r"ensemble\.json: members use different tokenizers \(member_0=[0-9a-f]{16}, "
        r"member_1=[0-9a-f]{16}\); an ensemble needs one shared tokenizer",
    ):
        save_ensemble(tmp_path / "ens", [members[0], other])


def test_members_with_different_inputs_are_refused() -> None:
    concat, _ = make_member(0)
    split, _ = make_member(0, arch="separate")
    with pytest.raises(
        ValueError,
        match=r"members take different inputs \(RewardModel\(concat\), "
        r"SeparateEncoderRewardModel\(split\)\)",
    ):
        EnsembleRewardModel([concat, split])


def test_bad_member_folder_and_empty_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no member folders"):
        save_ensemble(tmp_path / "ens", [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"member 0: .*empty is not a saved reward model folder"):
        save_ensemble(tmp_path / "ens", [tmp_path / "empty"])


def test_ensemble_json_has_no_aggregate_block_and_old_files_with_one_still_load(
    ensemble: Path, tmp_path: Path, expected: np.ndarray
) -> None:
    record = json.loads((ensemble / "ensemble.json").read_text())
    assert sorted(record) == ["format_version", "members", "metadata"]
    old = tmp_path / "old"
    shutil.copytree(ensemble, old)
    record["aggregate"] = {"reward": "lcb", "lam": 2.0, "k": 3.0}  # what older raw_rm wrote
    (old / "ensemble.json").write_text(json.dumps(record))
    model, tokenizer = load_model(old)
    with torch.no_grad():
        members = model(**encode_features(tokenizer, PROMPTS, RESPONSES, "concat")).members.numpy()
    np.testing.assert_allclose(members, expected, atol=1e-5)
    save_model(model, tokenizer, old)  # rewriting the record drops the unread block
    assert "aggregate" not in json.loads((old / "ensemble.json").read_text())


def test_member_configs_and_bootstrap_resamples(tmp_path: Path) -> None:
    from raw_rm.config import Config, apply_overrides
    from raw_rm.train.ensemble import bootstrap_resample, member_configs

    cfg = apply_overrides(
        Config(),
        {"train.seed": 7, "train.output_dir": str(tmp_path), "ensemble.members": 3, "ensemble.bootstrap": True},
    )
    configs = member_configs(cfg)
    assert [c.train.seed for c in configs] == [7, 8, 9]
    assert [c.train.output_dir for c in configs] == [str(tmp_path / "members" / f"member_{i}") for i in range(3)]
    assert all(c.ensemble.bootstrap and not c.mlflow.enabled for c in configs)
    records = list(range(50))
    a, b = bootstrap_resample(records, 7), bootstrap_resample(records, 8)
    assert len(a) == 50 and a == bootstrap_resample(records, 7) and a != b
    assert len(set(a)) < 50 and set(a) <= set(records)  # drawn with replacement: some records repeat


def test_member_comparison_fits_each_contender_on_one_half_and_measures_on_the_other() -> None:
    from raw_rm import metrics as M
    from raw_rm.config import EvalConfig
    from raw_rm.data.records import PreferencePair
    from raw_rm.train.ensemble import member_comparison

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(prompt=f"prompt {i}", chosen=f"good {i}", rejected=f"bad {i}") for i in range(400)]
    truth = rng.normal(1.0, 1.0, size=len(pairs))
    noise = rng.normal(0.0, 1.5, size=(len(pairs), 3))  # three members: the truth plus independent noise
    row = {p.prompt: i for i, p in enumerate(pairs)}

    class Members:  # stands in for RewardModelInference.batch_predict_members: chosen gets Δ_k, rejected 0
        def batch_predict_members(self, prompts, responses):
            return np.array(
                [
                    truth[row[p]] + noise[row[p]] if r.startswith("good") else np.zeros(3)
                    for p, r in zip(prompts, responses, strict=True)
                ]
            )

    out = member_comparison(Members(), pairs, EvalConfig(calibration_salt="t"))
    assert out["n_fit"] + out["n_eval"] == 400 and out["n_fit"] > 0 and out["n_eval"] > 0
    assert len(out["members"]) == 3 and 0 <= out["best_member"] < 3
    # independent member errors average out: the ensemble's NLL is below every member's
    assert out["ensemble"]["nll"] < min(m["nll"] for m in out["members"])
    assert out["ensemble_minus_best_nll"] == pytest.approx(
        out["ensemble"]["nll"] - out["members"][out["best_member"]]["nll"]
    )
    assert member_comparison(Members(), pairs[:10], EvalConfig()) is None  # too few pairs to split
    with pytest.raises(ValueError, match="same K"):
        M.compare_members(np.zeros((4, 2)), np.zeros((4, 3)))
