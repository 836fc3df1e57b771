"""raw_rm.plan against a hand computation for one small config, and `raw-rm plan` end to end."""

from __future__ import annotations

import pytest
from transformers import Qwen2Config

from raw_rm.cli import main
from raw_rm.plan import GIB, PlanError, model_shape, plan_memory, plan_one, require_fit

# V=100, H=16, I=32, 2 layers, 4 query heads and 2 key-value heads of width 4, q/k/v biases (Qwen2).
TINY = Qwen2Config(
    vocab_size=100,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
# By hand: embeddings 100*16 = 1600. A layer: q 16*16+16 = 272, k and v 16*8+8 = 136 each, o 16*16 = 256,
# gate/up/down 3*16*32 = 1536, two RMSNorms 32: 2368. Final norm 16, score head 16.
P = 1600 + 2 * 2368 + 16 + 16  # 6368
# LoRA rank 1 on q,k,v,o,gate,up,down: (in + out) = 32 + 24 + 24 + 32 + 48 + 48 + 48 = 256 a layer.
LORA_R1 = 2 * 256
# Activations a token and layer: 4H + 2q + 2kv + 4I = 64 + 32 + 16 + 128 = 240 values; 2 pairs of 8 tokens =
# 32 tokens; + 2H for the embedding output and final norm; 2 bytes (bf16).
ACTS = 32 * (2 * 240 + 32) * 2  # 32768
ACTS_CKPT = 32 * (2 * 16 + 240 + 32) * 2  # 19456


def test_shape_counts_match_the_hand_count() -> None:
    shape = model_shape(TINY)
    assert (shape.params, shape.root_params, shape.block_params) == (P, 1632, 2368)
    assert shape.lora_params_per_rank == LORA_R1
    assert (shape.q_dim, shape.kv_dim, shape.num_layers) == (16, 8, 2)


def test_plan_bytes_match_the_hand_computation() -> None:
    shape = model_shape(TINY)
    kw = {"max_len_tokens": 8, "batch_size": 2, "reserve_gib": 0.0}
    ddp = plan_one(shape, strategy="ddp", tuning="full", checkpointing=False, gpus=1, **kw)
    assert (ddp.weights, ddp.grads, ddp.optimizer, ddp.working, ddp.activations) == (4 * P, 4 * P, 8 * P, 2 * P, ACTS)
    assert ddp.total == 18 * P + ACTS
    ckpt = plan_one(shape, strategy="ddp", tuning="full", checkpointing=True, gpus=1, **kw)
    assert ckpt.activations == ACTS_CKPT
    fsdp = plan_one(shape, strategy="fsdp", tuning="full", checkpointing=False, gpus=2, **kw)
    assert (fsdp.weights, fsdp.grads, fsdp.optimizer) == (2 * P, 2 * P, 4 * P)
    assert fsdp.working == 2 * 1632 + 3 * 2 * 2368  # bf16 root + two blocks + one gradient block
    lora = plan_one(shape, strategy="ddp", tuning="lora", checkpointing=False, gpus=1, lora_rank=4, **kw)
    trainable = 4 * LORA_R1 + 16
    assert (lora.trainable_params, lora.weights, lora.grads, lora.optimizer, lora.working) == (
        trainable,
        4 * (P + 4 * LORA_R1),
        4 * trainable,
        8 * trainable,
        2 * P,
    )
    off = plan_one(shape, strategy="fsdp_offload", tuning="full", checkpointing=True, gpus=2, **kw)
    assert (off.weights, off.grads, off.optimizer, off.host_bytes) == (0, 0, 0, 8 * P)
    assert len(plan_memory(shape, gpus=2, max_len_tokens=8, batch_size=2)) == 12


def test_known_shapes_match_their_published_sizes() -> None:
    qwen = model_shape("Qwen/Qwen2.5-0.5B-Instruct")
    # Qwen2.5-0.5B: 0.49B parameters, 0.36B without the (tied) embeddings, as its model card says.
    assert qwen.params == 494_032_768 + 896
    assert round((qwen.params - 896 - 151936 * 896) / 1e9, 2) == 0.36


def test_a_plan_that_does_not_fit_names_the_keys_and_what_fits() -> None:
    shape = model_shape(TINY)
    plans = plan_memory(shape, gpus=2, max_len_tokens=8, batch_size=2, reserve_gib=0.0)
    ddp_full = next(p for p in plans if (p.strategy, p.tuning, p.checkpointing) == ("ddp", "full", False))
    budget = (ddp_full.total - 1) / GIB
    with pytest.raises(PlanError) as err:
        require_fit(plans, ddp_full, gpu_mem_gib=budget)
    message = str(err.value)
    assert message.startswith(
        "ray.strategy=ddp model.lora_rank=0 model.gradient_checkpointing=false: needs 0.0 GiB per GPU, more than "
    )
    smallest = min(plans, key=lambda p: p.total)
    assert f"these fit: {smallest.keys()} (" in message
    with pytest.raises(PlanError, match="no combination fits: add GPUs, or lower train.batch_size"):
        require_fit(plans, ddp_full, gpu_mem_gib=1e-9)
    with pytest.raises(PlanError, match="data.max_len_tokens=65: qwen2 takes at most 64 positions"):
        plan_memory(shape, gpus=1, max_len_tokens=65, batch_size=1)


def test_cli_prints_the_plan_and_refuses_a_config_that_does_not_fit(tmp_path, capsys) -> None:
    assert (
        main(["plan", "--model", "llama-3-70b", "--gpus", "16", "--gpu-mem", "80", "--max-len", "2048", "--batch", "1"])
        == 0
    )
    out = capsys.readouterr().out
    # Llama 3 70B by hand: embeddings 128256*8192 = 1,050,673,152; a layer: q and o 8192^2 each, k and v 8192*1024
    # each, MLP 3*8192*28672, norms 2*8192 = 855,654,400; 80 layers; final norm and score head 8192 each.
    assert 1_050_673_152 + 80 * 855_654_400 + 2 * 8192 == 69_503_041_536
    assert out.startswith("llama-3-70b: 69,503,041,536 parameters (69.50 B), 80 layers; 16 GPU(s) of 80 GiB")
    assert out.count("\n") == 15  # model line, column names, 12 combinations, the config's choice
    (tmp_path / "c.yaml").write_text(
        "model:\n  backbone: meta-llama/Meta-Llama-3-8B\ndata:\n  max_len_tokens: 2048\ntrain:\n  batch_size: 8\n"
        "ray:\n  num_workers: 2\n"
    )
    assert main(["plan", "--config", str(tmp_path / "c.yaml"), "--gpu-mem", "80"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "raw-rm plan: error: ray.strategy=ddp model.lora_rank=0 model.gradient_checkpointing=false: needs "
    )
    assert "these fit: ray.strategy=fsdp" in err
    assert main(["plan", "--model", "nope", "--gpu-mem", "80"]) == 2
    assert "model.backbone=nope: neither a folder with config.json nor a known shape" in capsys.readouterr().err


def test_job_submission_prints_the_plan_and_stops_on_a_misfit(capsys) -> None:
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("job_train", repo / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--gpu-mem", "10", "--config", str(repo / "raw_rm" / "configs" / "scale_8b.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(
        "meta-llama/Meta-Llama-3-8B: 7,504,928,768 parameters (7.50 B), 32 layers; "
        "16 GPU(s) of 10 GiB; 4 pairs x 2048 tokens"
    )
    assert captured.out.rstrip().endswith(
        "config: ray.strategy=fsdp model.lora_rank=0 model.gradient_checkpointing=true -> 18.00 GiB per GPU"
    )
    assert "no combination fits: add GPUs, or lower train.batch_size or data.max_len_tokens" in captured.err
