"""int8 dynamic quantisation and distillation into a student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raw_rm.config import Config, DataConfig, ModelConfig, TrainConfig
from raw_rm.data.records import PreferencePair
from raw_rm.inference import RewardModelInference
from raw_rm.models import build_model, save_model
from raw_rm.quantization import compare_quantized, load_for_inference, quantize_int8, write_quantized
from raw_rm.train.distill import distill

DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


def pairs(n: int) -> list[PreferencePair]:
    return [
        PreferencePair(prompt=f"question {i}", chosen=f"helpful answer {i} " * (1 + i % 3), rejected=f"bad {i}")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def model_and_tok():
    torch.manual_seed(0)
    model, tok = build_model(ModelConfig(backbone="tiny-bert"))
    return model.eval(), tok


def test_int8_replaces_every_linear_and_keeps_the_original(model_and_tok):
    model, tok = model_and_tok
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    q = quantize_int8(model)
    assert sum(isinstance(m, DynamicLinear) for m in q.modules()) == n_linear > 0
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert sum(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in model.modules()) == n_linear
    assert q.metadata is not model.metadata and q.metadata.to_dict() == model.metadata.to_dict()
    fp32 = RewardModelInference(model, tokenizer=tok).batch_predict(["p"] * 4, ["a", "b c", "d e f", "g"])
    int8 = RewardModelInference(q, tokenizer=tok).batch_predict(["p"] * 4, ["a", "b c", "d e f", "g"])
    assert np.all(np.isfinite(int8)) and np.max(np.abs(int8 - fp32)) < 0.1


def test_quantized_export_loads_quantized(model_and_tok, tmp_path):
    model, tok = model_and_tok
    save_model(model, tok, tmp_path / "m")
    out = write_quantized(tmp_path / "m", tmp_path / "q")
    assert (out / "quantization.json").exists()
    rm = load_for_inference(out)
    assert any(isinstance(m, DynamicLinear) for m in rm.model.modules())
    expected = RewardModelInference(quantize_int8(model), tokenizer=tok).batch_predict(["p"], ["a b"])
    np.testing.assert_allclose(rm.batch_predict(["p"], ["a b"]), expected, atol=1e-6)


def test_compare_quantized_reports_both_accuracies(model_and_tok):
    model, tok = model_and_tok
    data = pairs(6)
    report = compare_quantized(model, data, tokenizer=tok)
    rm = RewardModelInference(model, tokenizer=tok)
    delta = rm.batch_predict([p.prompt for p in data], [p.chosen for p in data]) - rm.batch_predict(
        [p.prompt for p in data], [p.rejected for p in data]
    )
    assert report["accuracy_fp32"] == pytest.approx(float(np.mean(delta > 0)))
    assert report["accuracy_change"] == pytest.approx(report["accuracy_int8"] - report["accuracy_fp32"])
    assert report["speedup"] == pytest.approx(report["texts_per_s_int8"] / report["texts_per_s_fp32"])
    assert report["n_pairs"] == 6.0


def test_distillation_lowers_student_teacher_mse(model_and_tok, tmp_path):
    import copy

    base, tok = model_and_tok
    teacher = copy.deepcopy(base)  # the tiny backbone is seeded: perturb it so that the student starts elsewhere
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    teacher.metadata.reward_mean, teacher.metadata.reward_std = 0.0, 1.0
    cfg = Config(
        data=DataConfig(max_len_tokens=32),
        model=ModelConfig(backbone="tiny-bert", dropout=0.0),
        train=TrainConfig(
            epochs=3,
            batch_size=4,
            lr=3e-3,
            warmup_ratio=0.0,
            schedule="constant",
            precision="fp32",
            progress=False,
            output_dir=str(tmp_path / "student"),
            seed=1,
            restore_best=False,
        ),
    )
    torch.manual_seed(1)
    result = distill(teacher, cfg, pairs(8), val_records=pairs(2), teacher_tokenizer=tok, mode="both")
    assert result.mse_after < result.mse_before
    assert result.fit.steps == 6
    assert set(result.metrics) >= {"mse_before", "mse_after", "teacher_val_accuracy", "val_accuracy"}


def test_distill_mode_is_checked(model_and_tok, tmp_path):
    teacher, tok = model_and_tok
    with pytest.raises(ValueError, match="mode must be reward, preference or both, got 'kl'"):
        distill(teacher, Config(), pairs(2), teacher_tokenizer=tok, mode="kl")
