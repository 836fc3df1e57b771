"""Objectives (raw_rm/train/objectives/): each loss on a hand-made batch equals its hand-derived value, and every
objective meets the loop's contract (collate layout, finite loss, gradient, accumulation = one big batch)."""

from __future__ import annotations

import math

import pytest
import torch

from raw_rm.config import (
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
)
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.models import build_model
from raw_rm.models.base import RewardOutput
from raw_rm.train.loop import RewardModelTrainer
from raw_rm.train.objectives import (
    Distillation,
    DistillObjective,
    GroupsObjective,
    PairsObjective,
    RatingsObjective,
    build_objective,
)

ASPECTS = ["helpfulness", "harmlessness"]


def cfg_for(tmp_path, *, arch: str = "concat", loss: str = "bt", **train) -> Config:
    train = {
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_ratio": 0.0,
        "schedule": "constant",
        "precision": "fp32",
        "progress": False,
        "output_dir": str(tmp_path / "run"),
        **train,
    }
    model = ModelConfig(arch=arch, backbone="tiny-bert", dropout=0.0, num_heads=3, aspects=ASPECTS)
    return Config(
        data=DataConfig(max_len_tokens=32), model=model, loss=LossConfig(name=loss), train=TrainConfig(**train)
    )


def pairs(n: int) -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt=f"question {i}?",
            chosen=f"a careful helpful answer {i}",
            rejected=f"no {i}" + " x" * i,
            weight=1.0 if i % 2 else 0.5,
        )
        for i in range(n)
    ]


def groups(n: int) -> list[RankedGroup]:
    return [
        RankedGroup(
            prompt=f"q {i}",
            responses=["good answer", "fine", "bad" + " x" * i][: 2 + i % 2],
            ranks=[0, 1, 2][: 2 + i % 2],
        )
        for i in range(n)
    ]


def ratings(n: int) -> list[RatedResponse]:
    return [
        RatedResponse(
            prompt=f"q {i // 2}",
            response=("good answer" if i % 2 else "bad") + f" {i}",
            ratings={"helpfulness": float(i % 2), "harmlessness": 0.5},
        )
        for i in range(n)
    ]


class FixedTeacher:
    """A teacher with a known reward per text: the length of the response in words."""

    def __init__(self) -> None:
        self.scored: list[tuple[str, str]] = []

    def score(self, items) -> None:
        self.scored += list(items)

    def __call__(self, prompt: str, response: str) -> float:
        return float(len(response.split()))


def model_for(cfg: Config):
    torch.manual_seed(0)
    return build_model(cfg.model)


KINDS = {
    "pairs": ("concat", pairs, None),
    "pairs_multihead": ("multihead", pairs, None),
    "groups": ("concat", groups, None),
    "ratings": ("multi_objective", ratings, None),
    "distill": ("concat", pairs, lambda: Distillation(FixedTeacher(), alpha=0.5, distill_temperature=2.0)),
}


def objective_setup(tmp_path, name: str, *, loss: str = "bt", **train):
    arch, make, distillation = KINDS[name]
    cfg = cfg_for(tmp_path, arch=arch, loss=loss, **train)
    model, tok = model_for(cfg)
    records = make(6)
    objective = build_objective(cfg, model, tok, records, distillation=distillation() if distillation else None)
    return cfg, model, tok, records, objective


# ----------------------------------------------------------------------------------- hand-made losses
def test_pairs_loss_is_the_weighted_bradley_terry_loss(tmp_path):
    cfg, model, tok, _, objective = objective_setup(tmp_path, "pairs")
    assert isinstance(objective, PairsObjective)
    batch = {
        "n_pairs": 2,
        "margin": torch.tensor([math.nan, 0.5]),
        "weight": torch.tensor([1.0, 0.5]),
        "index": torch.tensor([0, 1]),
    }
    output = RewardOutput(rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]))  # chosen (1, 0), rejected (0, 0)
    loss, parts = objective.loss(output, batch, training=True)
    # -log σ(1 - 0) with weight 1 and -log σ(0 - 0 - 0.5) with weight 0.5 (NaN margin = none)
    expected = (math.log1p(math.exp(-1.0)) + 0.5 * math.log1p(math.exp(0.5))) / 1.5
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert parts["chosen"].tolist() == [1.0, 0.0] and parts["rejected"].tolist() == [0.0, 0.0]
    assert objective.share(batch) == 1.5  # weighted mean: a micro-batch counts by its summed weights
    cfg.loss.use_weights = False
    unweighted = build_objective(cfg, model, tok, pairs(2))
    assert float(unweighted.loss(output, batch, training=True)[0]) == pytest.approx(
        (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2, rel=1e-6
    )
    assert unweighted.share(batch) == 2.0


def test_groups_loss_is_the_plackett_luce_loss(tmp_path):
    _, _, _, _, objective = objective_setup(tmp_path, "groups", loss="plackett_luce")
    assert isinstance(objective, GroupsObjective)
    batch = {
        "group_rewards_index": torch.tensor([[0, 1, 2], [3, 4, 0]]),
        "ranks": torch.tensor([[0, 1, 2], [1, 0, -1]]),
        "mask": torch.tensor([[True, True, True], [True, True, False]]),
        "index": torch.tensor([0, 1]),
    }
    output = RewardOutput(rewards=torch.tensor([2.0, 1.0, 0.0, 0.0, 3.0]))
    loss, parts = objective.loss(output, batch, training=True)

    def lse(*xs: float) -> float:
        return math.log(sum(math.exp(x) for x in xs))

    group_a = (lse(2, 1, 0) - 2) + (lse(1, 0) - 1)  # best first: 2 among {2, 1, 0}, then 1 among {1, 0}
    group_b = lse(3, 0) - 3  # row 4 (reward 3) is ranked first, then row 3
    assert float(loss) == pytest.approx((group_a + group_b) / 2, rel=1e-6)
    # metric pairs: (better, worse) for each ranked pair within a group
    assert sorted(zip(parts["chosen"].tolist(), parts["rejected"].tolist())) == [
        (1.0, 0.0),
        (2.0, 0.0),
        (2.0, 1.0),
        (3.0, 0.0),
    ]
    assert objective.n_items(batch) == 2


def test_ratings_loss_is_the_masked_per_aspect_mse(tmp_path):
    _, _, _, _, objective = objective_setup(tmp_path, "ratings")
    assert isinstance(objective, RatingsObjective)
    batch = {
        "ratings": torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]),
        "ratings_mask": torch.tensor([[True, False], [False, True], [True, False]]),
        "index": torch.tensor([0, 1, 2]),
    }
    output = RewardOutput(rewards=torch.zeros(3), aspects=torch.tensor([[0.0, 9.0], [9.0, 1.0], [1.0, 9.0]]))
    loss, _ = objective.loss(output, batch, training=True)
    helpfulness = ((0.0 - 1.0) ** 2 + (1.0 - 3.0) ** 2) / 2  # rows 0 and 2 rate it
    harmlessness = (1.0 - 2.0) ** 2  # row 1 rates it; masked entries (the 9s) never count
    assert float(loss) == pytest.approx((helpfulness + harmlessness) / 2, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distill_loss_is_mse_plus_bce_to_the_softened_teacher(tmp_path, temperature):
    cfg = cfg_for(tmp_path)
    model, tok = model_for(cfg)
    teacher = FixedTeacher()
    objective = build_objective(
        cfg, model, tok, pairs(2), distillation=Distillation(teacher, alpha=0.25, distill_temperature=temperature)
    )
    assert isinstance(objective, DistillObjective)
    batch = {
        "n_pairs": 1,
        "teacher": torch.tensor([3.0, 1.0]),
        "weight": torch.tensor([0.5]),
        "index": torch.tensor([0]),
    }
    output = RewardOutput(rewards=torch.tensor([1.0, 0.0]))
    loss, parts = objective.loss(output, batch, training=True)
    mse = ((1.0 - 3.0) ** 2 + (0.0 - 1.0) ** 2) / 2
    target = 1 / (1 + math.exp(-(3.0 - 1.0) / temperature))
    p = 1 / (1 + math.exp(-1.0))  # σ(Δ_student)
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    assert float(loss) == pytest.approx(0.25 * mse + 0.75 * bce, rel=1e-6)
    assert parts["teacher"].tolist() == [3.0, 1.0]
    assert objective.share(batch) == 1.0  # an unweighted mean: the pair's weight field (0.5) does not count


def test_distill_collate_adds_the_teachers_rewards_in_feature_order(tmp_path):
    cfg = cfg_for(tmp_path)
    model, tok = model_for(cfg)
    teacher = FixedTeacher()
    data = pairs(3)
    objective = build_objective(
        cfg, model, tok, data, distillation=Distillation(teacher, alpha=0.5, distill_temperature=1.0)
    )
    batch = objective.collate(data, [2, 0])
    expected = [
        len(data[2].chosen.split()),
        len(data[0].chosen.split()),
        len(data[2].rejected.split()),
        len(data[0].rejected.split()),
    ]
    assert batch["teacher"].tolist() == [float(x) for x in expected]
    assert set(teacher.scored) >= {(data[i].prompt, t) for i in (0, 2) for t in (data[i].chosen, data[i].rejected)}


def test_build_objective_refuses_what_cannot_train(tmp_path):
    cfg = cfg_for(tmp_path)
    model, tok = model_for(cfg)
    with pytest.raises(ConfigError) as exc:
        build_objective(
            cfg, model, tok, groups(2), distillation=Distillation(FixedTeacher(), alpha=0.5, distill_temperature=1.0)
        )
    assert str(exc.value) == (
        "distillation trains on pairs; got groups (convert groups with raw_rm.data.formats.group_to_pairs)"
    )
    with pytest.raises(
        ValueError, match=r"expected 0 <= alpha <= 1 and distill_temperature > 0, got alpha=0.5, distill_temperature=0"
    ):
        build_objective(
            cfg, model, tok, pairs(2), distillation=Distillation(FixedTeacher(), alpha=0.5, distill_temperature=0)
        )
    with pytest.raises(TypeError, match="train records are pairs but validation records are groups"):
        build_objective(cfg, model, tok, pairs(2), groups(1))
    cfg.loss.uncertainty_weighting = True
    with pytest.raises(ConfigError, match="needs pairs and an ensemble of heads"):
        build_objective(cfg, model, tok, groups(2))


@pytest.mark.parametrize("name", list(KINDS))
def test_every_objective_meets_the_loop_contract(tmp_path, name):
    _, model, _, records, objective = objective_setup(tmp_path, name)
    indices = [4, 1, 3]
    batch = objective.collate(records, indices)
    n_rows = sum(len(objective.record_texts(records[i])) for i in indices)
    assert batch["index"].tolist() == indices
    assert objective.n_items(batch) == 3
    assert batch["features"]["input_ids"].shape[0] == n_rows  # one feature row per (prompt, response) text
    model.train()
    output = model(**batch["features"])
    loss, parts = objective.loss(output, batch, training=True)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.norm()) for g in grads) > 0
    step = objective.step_metrics([parts])
    assert set(step) == {"accuracy", "margin_mean", "reward_mean", "reward_std"}
    assert objective.rewards([parts]).numel() == n_rows
    with torch.no_grad():
        predicted = objective.predict(model.eval()(**batch["features"]), batch)
    assert {"loss", "n", "n_truncated", "index"} <= set(predicted) and int(predicted["n"]) == 3


@pytest.mark.parametrize("name", list(KINDS))
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, name):
    """Uneven micro-batches of weighted pairs: each micro-batch's loss counts by its share of the step's loss."""
    grads = {}
    trainers = {}
    for key, accum in (("big", 1), ("small", 2)):
        cfg, model, tok, records, objective = objective_setup(tmp_path / key, name, grad_accum_steps=accum)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trainer = RewardModelTrainer(cfg, model, tok, records, [], objective=objective)

        def capture(trainer=trainer, key=key):
            grads[key] = [p.grad.clone() if p.grad is not None else None for p in trainer.model.parameters()]

        trainer.optimizer.step = capture
        trainers[key] = trainer
    m_big = trainers["big"].train_step(trainers["big"].collate([0, 1, 2, 3, 4]))
    m_small = trainers["small"].train_step([trainers["small"].collate([0, 1]), trainers["small"].collate([2, 3, 4])])
    assert m_big["loss"] == pytest.approx(m_small["loss"], abs=1e-6)
    assert [g is None for g in grads["big"]] == [h is None for h in grads["small"]]
    big = torch.cat([g.flatten() for g in grads["big"] if g is not None])
    small = torch.cat([h.flatten() for h in grads["small"] if h is not None])
    # the whole gradient, relative to its size: float32 noise only (the two runs sum in different orders)
    assert float((big - small).norm()) <= 1e-4 * float(big.norm()), float((big - small).norm() / big.norm())
