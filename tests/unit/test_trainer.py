"""The training loop: every loss and arch learns on a fixed batch, accumulation, early stopping, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from raw_rm.config import Config, ConfigError, DataConfig, LossConfig, ModelConfig, TrainConfig
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.models import build_model
from raw_rm.runtime import cpu_supports_bf16, resolve_precision
from raw_rm.train.checkpoint import latest_checkpoint
from raw_rm.train.loop import RewardModelTrainer
from raw_rm.train.optim import build_optimizer, lr_lambda

GOOD = ["a kind and helpful answer", "a clear correct careful reply", "thanks, here is a helpful explanation"]
BAD = ["rude nonsense", "go away idiot", "wrong wrong wrong"]


def pairs(n: int, *, aspect: str | None = None) -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt=f"question {i}?",
            chosen=GOOD[i % 3] + f" {i}",
            rejected=BAD[i % 3] + f" {i}" + " x" * (i % 5),
            weight=1.0 if i % 2 else 0.5,
            aspect=aspect,
            source=f"t:{i}",
        )
        for i in range(n)
    ]


def groups(n: int) -> list[RankedGroup]:
    return [
        RankedGroup(prompt=f"q {i}", responses=[GOOD[i % 3], "okay-ish answer", BAD[i % 3]], ranks=[0, 1, 2])
        for i in range(n)
    ]


def ratings(n: int) -> list[RatedResponse]:
    out = []
    for i in range(n):
        out.append(
            RatedResponse(prompt=f"q {i}", response=GOOD[i % 3], ratings={"helpfulness": 1.0, "harmlessness": 0.5})
        )
        out.append(
            RatedResponse(prompt=f"q {i}", response=BAD[i % 3], ratings={"helpfulness": -1.0, "harmlessness": -0.5})
        )
    return out


def make_cfg(tmp_path, *, arch: str = "concat", loss: str = "bt", **train) -> Config:
    train = {
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_ratio": 0.0,
        "schedule": "constant",
        "precision": "fp32",
        "progress": False,
        "output_dir": str(tmp_path / "run"),
        "log_every_steps": 1,
        **train,
    }
    model = ModelConfig(
        arch=arch, backbone="tiny-bert", dropout=0.0, num_heads=3, aspects=["helpfulness", "harmlessness"]
    )
    return Config(
        data=DataConfig(max_len_tokens=32), model=model, loss=LossConfig(name=loss), train=TrainConfig(**train)
    )


def make_trainer(cfg: Config, train, val=(), **kwargs) -> RewardModelTrainer:
    torch.manual_seed(0)  # heads draw their init from the global RNG
    model, tok = build_model(cfg.model)
    return RewardModelTrainer(cfg, model, tok, train, list(val), **kwargs)


def fixed_batch_loss(trainer: RewardModelTrainer, batch) -> float:
    trainer.train_model.eval()
    with torch.no_grad():
        out = trainer.train_model(**trainer._features(batch))
        return float(trainer.objective.loss(out, batch, training=False)[0])


def trains_down(trainer: RewardModelTrainer, steps: int = 5) -> tuple[float, float]:
    batch = trainer.collate(list(range(len(trainer.train_records))))
    before = fixed_batch_loss(trainer, batch)
    for _ in range(steps):
        metrics = trainer.train_step(batch)
        assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])
    return before, fixed_batch_loss(trainer, batch)


@pytest.mark.parametrize("loss", ["bt", "margin", "contrastive", "focal", "triplet", "label_smoothing"])
def test_every_pair_loss_goes_down_on_a_fixed_batch(tmp_path, loss):
    trainer = make_trainer(make_cfg(tmp_path, loss=loss), pairs(8))
    before, after = trains_down(trainer)
    assert after < before, f"{loss}: {before} -> {after}"


@pytest.mark.parametrize("loss", ["kwise_adjacent", "kwise_all_pairs", "plackett_luce", "bt"])
def test_every_group_loss_goes_down_on_a_fixed_batch(tmp_path, loss):
    trainer = make_trainer(make_cfg(tmp_path, loss=loss), groups(6))
    before, after = trains_down(trainer)
    assert after < before, f"{loss}: {before} -> {after}"


@pytest.mark.parametrize(
    "arch", ["concat", "separate", "cross_attention", "multi_objective", "hierarchical", "multihead"]
)
def test_every_arch_goes_down_on_a_fixed_batch(tmp_path, arch):
    trainer = make_trainer(make_cfg(tmp_path, arch=arch), pairs(8))
    before, after = trains_down(trainer)
    assert after < before, f"{arch}: {before} -> {after}"


def test_multihead_bootstrap_and_uncertainty_weighting_train(tmp_path):
    cfg = make_cfg(tmp_path, arch="multihead")
    cfg.model.bootstrap = True
    cfg.loss.uncertainty_weighting = True
    trainer = make_trainer(cfg, pairs(8))
    assert trainer.objective.bootstrap is not None and tuple(trainer.objective.bootstrap.shape) == (8, 3)
    before, after = trains_down(trainer)
    assert after < before


def test_uncertainty_weighting_without_heads_is_refused(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.loss.uncertainty_weighting = True
    with pytest.raises(ConfigError, match="needs pairs and an ensemble of heads"):
        make_trainer(cfg, pairs(4))


def test_ratings_train_per_aspect_heads_by_mse(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, arch="multi_objective"), ratings(4))
    before, after = trains_down(trainer)
    assert after < before
    metrics = trainer.evaluate(ratings(2))
    assert set(metrics) >= {"val_loss", "val_mse_helpfulness", "val_mse_harmlessness", "val_accuracy"}


def test_ratings_need_a_multi_objective_model(tmp_path):
    with pytest.raises(ConfigError, match="data.kind=ratings trains per-aspect heads"):
        make_trainer(make_cfg(tmp_path), ratings(2))


def test_aspect_pairs_train_their_aspect_head(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, arch="multi_objective"), pairs(8, aspect="harmlessness"))
    batch = trainer.collate(list(range(8)))
    assert batch["aspect_index"].tolist() == [1] * 8
    trainer.train_model.eval()
    with torch.no_grad():
        out = trainer.train_model(**trainer._features(batch))
        _, parts = trainer.objective.loss(out, batch, training=False)
    assert torch.allclose(parts["chosen"], out.aspects[:8, 1].float())
    with pytest.raises(ConfigError, match=r"pairs name aspects \['honesty'\]"):
        make_trainer(make_cfg(tmp_path, arch="multi_objective"), pairs(2, aspect="honesty"))


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    data = pairs(8)
    big = make_trainer(make_cfg(tmp_path / "a"), data)
    small = make_trainer(make_cfg(tmp_path / "b", grad_accum_steps=2), data)
    for module in [*big.model.modules(), *small.model.modules()]:
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the backbone's own dropout (hidden_dropout_prob) would make the two runs differ
    grads = {}

    def capture(trainer, key):
        # the gradient the optimiser sees (after clipping), compared directly: Adam's first step is ~lr*sign(g),
        # which would turn float noise in near-zero gradients into visible weight differences
        def step(*args, **kwargs):
            grads[key] = [p.grad.clone() for p in trainer.model.parameters()]

        trainer.optimizer.step = step

    capture(big, "big")
    capture(small, "small")
    m_big = big.train_step(big.collate(list(range(8))))
    m_small = small.train_step([small.collate([0, 1, 2]), small.collate([3, 4, 5, 6, 7])])  # uneven on purpose
    assert m_big["loss"] == pytest.approx(m_small["loss"], abs=1e-6)
    assert m_big["grad_norm"] == pytest.approx(m_small["grad_norm"], rel=1e-5)
    names = [n for n, _ in big.model.named_parameters()]
    for name, g, h in zip(names, grads["big"], grads["small"], strict=True):
        assert torch.allclose(g, h, atol=1e-7, rtol=1e-4), name


def test_early_stopping_restores_the_best_weights(tmp_path):
    cfg = make_cfg(tmp_path, eval_every_steps=1, patience=2, max_steps=50, batch_size=2)
    trainer = make_trainer(cfg, pairs(16), pairs(2))
    values = iter([0.5, 0.7, 0.6, 0.65, 0.6, 0.1])
    trainer.evaluate = lambda records=None: {"val_accuracy": next(values), "val_loss": 1.0}
    snapshots = {}

    class Snap:
        def on_eval(self, step, metrics):
            snapshots[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.callbacks.append(Snap())
    result = trainer.fit()
    assert result.stopped_early and result.steps == 4
    assert result.best_step == 2 and result.best_metric == 0.7
    assert [h["val_accuracy"] for h in result.history] == [0.5, 0.7, 0.6, 0.65]
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k
    assert any(not torch.equal(snapshots[4][k], snapshots[2][k]) for k in snapshots[2])  # restoring changed something


def test_resume_mid_epoch_gives_the_uninterrupted_weights(tmp_path):
    data, val = pairs(24), pairs(4)

    def cfg(name, **kw):
        c = make_cfg(
            tmp_path / name,
            batch_size=4,
            epochs=2,
            checkpoint_every_steps=4,
            lr=1e-3,
            warmup_ratio=0.2,
            schedule="cosine",
            **kw,
        )
        c.model.dropout = 0.1  # dropout draws from the RNG: resume must restore it
        c.model.arch = "multihead"
        c.model.bootstrap = True
        return c

    full = make_trainer(cfg("full"), data, val)
    full_result = full.fit()
    assert full_result.steps == 12

    from loop_hooks import FailOnceAtStep

    broken_cfg = cfg("broken")
    fail = FailOnceAtStep(6, tmp_path / "failed_once")
    with pytest.raises(RuntimeError, match=r"^FailOnceAtStep\(6\): injected failure at step 6$"):
        make_trainer(broken_cfg, data, val, callbacks=[fail]).fit()
    ckpt = latest_checkpoint(broken_cfg.train.output_dir)
    assert ckpt is not None and ckpt.name == "step_4"  # mid-epoch: 6 steps per epoch
    broken_cfg.train.resume = True
    resumed = make_trainer(broken_cfg, data, val)
    result = resumed.fit()
    assert result.steps == 12 and result.resumed_from == str(ckpt)
    assert [h["step"] for h in result.history] == [h["step"] for h in full_result.history] == [6.0, 12.0]
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert resumed.model.metadata.reward_mean == pytest.approx(full.model.metadata.reward_mean, abs=1e-6)


def test_fit_stores_reward_normalisation_from_training_rewards(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, max_steps=2), pairs(6))
    trainer.fit()
    model = trainer.model.eval()
    rewards = []
    with torch.no_grad():
        for i in range(6):
            batch = trainer.collate([i])
            out = model(**trainer._features(batch))
            rewards += out.rewards.tolist()
    expected = torch.tensor(rewards, dtype=torch.float64)
    assert model.metadata.reward_mean == pytest.approx(float(expected.mean()), abs=1e-5)
    assert model.metadata.reward_std == pytest.approx(float(expected.std(unbiased=False)), abs=1e-5)
    assert set(model.metadata.reference) == {"reward", "length"}
    assert model.metadata.reference["reward"]["n"] == 12


def test_val_metrics_and_step_metrics(tmp_path):
    seen = []

    class Spy:
        def on_step(self, step, metrics):
            seen.append(metrics)

    trainer = make_trainer(make_cfg(tmp_path, max_steps=2), pairs(16), pairs(4), callbacks=[Spy()])
    result = trainer.fit()
    assert {"val_loss", "val_accuracy", "val_nll", "val_ece", "val_reward_mean", "val_reward_std"} <= set(
        result.final_metrics
    )
    expected = {
        "loss",
        "accuracy",
        "reward_mean",
        "reward_std",
        "margin_mean",
        "grad_norm",
        "lr",
        "pairs_per_s",
        "tokens_per_s",
        "padding_fraction",
        "n_truncated",
    }
    assert len(seen) == 2 and expected <= set(seen[0])
    assert seen[0]["lr"] == pytest.approx(3e-3)  # constant schedule, no warm-up


def test_lr_schedule_shapes():
    linear = lr_lambda(10, 2, "linear")
    assert [linear(s) for s in (0, 1)] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert linear(2) == 1.0 and linear(6) == pytest.approx(0.5) and linear(10) == 0.0
    cosine = lr_lambda(10, 2, "cosine")
    assert (
        cosine(2) == 1.0
        and cosine(6) == pytest.approx(0.5)
        and cosine(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    )
    assert lr_lambda(10, 2, "constant")(9) == 1.0
    with pytest.raises(ConfigError, match="train.schedule"):
        lr_lambda(10, 2, "step")


def test_no_weight_decay_on_biases_and_norms():
    model, _ = build_model(ModelConfig(backbone="tiny-bert"))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2 and "norm" not in name.lower()), name


def test_fp16_on_cpu_is_an_error():
    with pytest.raises(ConfigError) as exc:
        resolve_precision("fp16", "cpu")
    assert str(exc.value) == (
        "train.precision=fp16 needs a CUDA device (it trains with a gradient scaler); this run is on cpu: "
        "use train.precision=bf16 or fp32 (auto picks bf16 where the CPU supports it)"
    )


def test_auto_precision_follows_the_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "a"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without = tmp_path / "b"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_supports_bf16(str(with_bf16)) is True
    assert cpu_supports_bf16(str(without)) is False
    assert cpu_supports_bf16(str(tmp_path / "missing")) is False
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_bf16_autocast_step_runs_on_cpu(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, precision="bf16"), pairs(4))
    metrics = trainer.train_step(trainer.collate([0, 1, 2, 3]))
    assert trainer.autocast_dtype is torch.bfloat16 and math.isfinite(metrics["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
def test_train_layers_trains_only_the_top_layers_and_the_head(tmp_path, backbone):
    cfg = make_cfg(tmp_path)
    cfg.model.backbone, cfg.model.train_layers = backbone, 1
    trainer = make_trainer(cfg, pairs(16))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    first, last = trains_down(trainer)
    assert last < first
    moved = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {
        id(p) for p in trainer.model.parameters() if p.requires_grad
    }  # no AdamW state for frozen weights
    assert not any("embed" in name or "wte" in name or "wpe" in name for name in trainable)
    assert any(".0." in name for name in before) and not any(".0." in name for name in trainable)  # layer 0 frozen
