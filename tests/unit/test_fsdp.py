"""raw_rm/train/fsdp.py: on an unsharded module every hook is the plain call; on a tiny BERT sharded with FSDP2 in one
CPU process (gloo, world size 1) the hooks give what the plain module gives. Two ranks (reduce-scatter, rank-0
gathering, resume) are tested through Ray Train in tests/integration/test_ray_train.py.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from raw_rm.config import load_config
from raw_rm.data.batching import PairCollator
from raw_rm.data.records import PreferencePair
from raw_rm.models import build_model
from raw_rm.train import fsdp


def _tiny() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model, tokenizer = build_model(load_config(None, ["model.backbone=tiny-bert", "model.dropout=0.0"]).model)
    pairs = [
        PreferencePair(prompt=f"q {i}?", chosen=f"a helpful answer {i}", rejected="no " * (i + 1)) for i in range(3)
    ]
    batch = PairCollator(tokenizer, max_len_tokens=32, input_kind=model.input_kind)(pairs)
    return model.eval(), batch["features"]  # eval: BERT's internal dropout off, so both copies compute alike


@pytest.fixture()
def process_group():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_hooks_on_an_unsharded_module_are_the_plain_calls() -> None:
    model, features = _tiny()
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m(**features).rewards.pow(2).sum().backward()
    assert not fsdp.is_sharded(model)
    norm = fsdp.clip_grad_norm([p for p in model.parameters() if p.grad is not None], 0.01)
    expected = torch.nn.utils.clip_grad_norm_([p for p in twin.parameters() if p.grad is not None], 0.01)
    assert float(norm) == float(expected) > 0.01
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), twin.parameters()) if a.grad is not None)
    assert fsdp.model_state_dict(model).keys() == model.state_dict().keys()
    assert fsdp.unsharded_copy(model, build=lambda: pytest.fail("an unsharded model is exported as is")) is model
    with fsdp.no_gradient_sync(model):  # a plain module has nothing to skip
        pass


def test_blocks_are_the_transformer_layers_or_the_longest_module_list() -> None:
    model, _ = _tiny()
    assert [type(m).__name__ for m in fsdp.block_modules(model)] == ["BertEmbeddings", "BertLayer", "BertLayer"]
    plain = nn.Sequential(nn.ModuleList([nn.Linear(2, 2)]), nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]))
    assert fsdp.block_modules(plain) == list(plain[1])


def test_no_gradient_sync_turns_fsdp_reduction_off_and_back_on() -> None:
    calls = []

    class Sharded(nn.Module):
        def set_requires_gradient_sync(self, flag: bool) -> None:
            calls.append(flag)

    with pytest.raises(RuntimeError, match="boom"), fsdp.no_gradient_sync(Sharded()):
        raise RuntimeError("boom")
    assert calls == [False, True]  # restored even when the backward pass raised


def test_sharded_model_computes_clips_gathers_and_loads_like_the_plain_one(process_group) -> None:
    plain, features = _tiny()
    sharded = fsdp.shard_model(copy.deepcopy(plain))
    assert fsdp.is_sharded(sharded) and not fsdp.is_sharded(plain)
    rewards = sharded(**features).rewards
    assert torch.allclose(rewards, plain(**features).rewards, atol=1e-6)
    rewards.pow(2).sum().backward()
    plain(**features).rewards.pow(2).sum().backward()
    norm = fsdp.clip_grad_norm([p for p in sharded.parameters() if p.grad is not None], 0.01)
    expected = torch.nn.utils.clip_grad_norm_([p for p in plain.parameters() if p.grad is not None], 0.01)
    assert type(norm) is torch.Tensor and float(norm) == pytest.approx(float(expected), rel=1e-6) and float(norm) > 0.01
    for (name, a), b in zip(sharded.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a.grad.full_tensor(), b.grad, atol=1e-7), name  # clipped by the same factor
    state = fsdp.model_state_dict(sharded)
    assert state.keys() == plain.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    # Load other weights into the shards, then export: the copy holds exactly those weights, unsharded.
    other, _ = _tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    fsdp.load_model_state_dict(sharded, other.state_dict(), device=torch.device("cpu"))
    exported = fsdp.unsharded_copy(sharded, build=lambda: _tiny()[0])
    assert not fsdp.is_sharded(exported) and exported.metadata is sharded.metadata
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in other.state_dict().items())


def test_a_checkpoint_resumes_only_under_the_strategy_that_wrote_it(tmp_path) -> None:
    import json

    from raw_rm.train.loop import RewardModelTrainer

    cfg = load_config(None, ["model.backbone=tiny-bert", "train.precision=fp32", f"train.output_dir={tmp_path}"])
    model, tokenizer = build_model(cfg.model)
    pairs = [PreferencePair(prompt=f"q {i}?", chosen=f"good {i}", rejected=f"bad {i}") for i in range(4)]
    trainer = RewardModelTrainer(cfg, model, tokenizer, pairs, [], device="cpu")
    path = Path(trainer.save_checkpoint())
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["fsdp"] is False
    state["fsdp"] = True  # as an FSDP run writes it: optimizer.pt keyed by parameter name
    (path / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(
        ValueError,
        match=r"checkpoint written under ray.strategy=fsdp cannot resume under ray.strategy=ddp \(or a local run\)",
    ):
        trainer.load_checkpoint(path)


def test_levers_compose_with_fsdp2(process_group) -> None:
    """LoRA + activation checkpointing on a Qwen2-shaped decoder, sharded: the same rewards and gradients as the
    plain module, and only adapters and head get gradients. (CPU offload needs a GPU: benchmarks/gpu_scale.py.)"""
    cfg = load_config(
        None,
        [
            "model.backbone=tiny-qwen2",
            "model.dropout=0.0",
            "model.backbone_dropout=0.0",
            "model.lora_rank=4",
            "model.gradient_checkpointing=true",
        ],
    ).model
    torch.manual_seed(0)
    plain, tokenizer = build_model(cfg)
    with torch.no_grad():  # adapters start at B = 0: move them so their gradients are not trivially structured
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    pairs = [
        PreferencePair(prompt=f"q {i}?", chosen=f"a helpful answer {i}", rejected="no " * (i + 1)) for i in range(3)
    ]
    features = PairCollator(tokenizer, max_len_tokens=32, input_kind="concat")(pairs)["features"]
    if not torch.accelerator.is_available():
        with pytest.raises(ValueError, match=r"ray.cpu_offload=true: FSDP2 offloads shards from a GPU to host memory"):
            fsdp.shard_model(copy.deepcopy(plain), cpu_offload=True)
    sharded = fsdp.shard_model(copy.deepcopy(plain))
    plain.train()
    sharded.train()
    rewards = sharded(**features).rewards
    expected = plain(**features).rewards
    torch.testing.assert_close(rewards, expected, atol=1e-6, rtol=0)
    rewards.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    with_grad = [name for name, p in sharded.named_parameters() if p.grad is not None]
    assert with_grad == [name for name, p in plain.named_parameters() if p.requires_grad]
    assert all(".lora_" in name or name == "hf.score.weight" for name in with_grad) and len(with_grad) == 29
    for (name, a), b in zip(sharded.named_parameters(), plain.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad.full_tensor(), b.grad, atol=1e-6, rtol=1e-5, msg=name)


def _resharding_worker(rank: int, world: int, port: int, tmp: str, phase: str) -> None:
    """One rank: train 2 steps and write a sharded checkpoint (phase "train"), or load it (phase "resume"); both
    then take one more step. Rank 0 writes the full weights after loading/saving and after the extra step."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, ["model.backbone=tiny-qwen2", "model.dropout=0.0", "model.backbone_dropout=0.0"])
        torch.manual_seed(0)
        model, tokenizer = build_model(cfg.model)
        model = fsdp.shard_model(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        pairs = [
            PreferencePair(prompt=f"q {i}?", chosen=f"a helpful answer {i}", rejected="no " * (i + 1)) for i in range(4)
        ]
        features = PairCollator(tokenizer, max_len_tokens=32, input_kind="concat")(pairs[rank::world])["features"]

        def step() -> None:
            rewards = model(**features).rewards
            half = rewards.shape[0] // 2
            loss = -torch.nn.functional.logsigmoid(rewards[:half] - rewards[half:]).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        if phase == "train":
            step()
            step()
            fsdp.save_sharded(model, optimizer, Path(tmp) / "ckpt")
        else:
            fsdp.load_sharded(model, optimizer, Path(tmp) / "ckpt")
        state = fsdp.cpu_model_state_dict(model)  # a copy: under one rank the full state is the live weights
        step()
        after = fsdp.cpu_model_state_dict(model)
        if rank == 0:
            torch.save({"at_checkpoint": state, "after_step": after}, Path(tmp) / f"{phase}_{world}.pt")
    finally:
        dist.destroy_process_group()


def _run_ranks(world: int, tmp: Path, phase: str) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_resharding_worker, args=(world, port, str(tmp), phase), nprocs=world, join=True)
    return torch.load(tmp / f"{phase}_{world}.pt", weights_only=True)


def test_a_sharded_checkpoint_resumes_under_one_and_two_workers_to_the_same_weights(tmp_path) -> None:
    written = _run_ranks(2, tmp_path, "train")
    assert (tmp_path / "ckpt" / ".metadata").is_file()
    for world in (1, 2):
        resumed = _run_ranks(world, tmp_path, "resume")
        assert resumed["at_checkpoint"].keys() == written["at_checkpoint"].keys()
        for key, value in written["at_checkpoint"].items():
            assert torch.equal(resumed["at_checkpoint"][key], value), (world, key)
        # The optimiser state came back too: the next step lands on the same weights as the uninterrupted run.
        for key, value in written["after_step"].items():
            torch.testing.assert_close(resumed["after_step"][key], value, atol=1e-6, rtol=1e-5, msg=f"{world} {key}")
        moved = max((written["after_step"][k] - written["at_checkpoint"][k]).abs().max() for k in written["after_step"])
        assert moved > 1e-4  # the step changed the weights, so equality after it is a check of AdamW's state
