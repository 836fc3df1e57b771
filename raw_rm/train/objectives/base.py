"""The interface every objective gives the loop, and the pieces that more than one objective uses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from raw_rm import metrics as M
from raw_rm.config import Config, ConfigError
from raw_rm.data.packing import pack_features
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.models.backbones import check_packable
from raw_rm.models.concat import RewardModel

Batch = dict[str, Any]
Parts = dict[str, torch.Tensor]

_KINDS = {PreferencePair: "pairs", RankedGroup: "groups", RatedResponse: "ratings"}


def packing_pad_id(model: nn.Module, tokenizer: Any) -> int:
    """The pad id for ``train.packing``, once the model is known to take packed rows; else a ConfigError."""
    if not isinstance(model, RewardModel):
        raise ConfigError(
            f"train.packing=true needs model.arch=concat (one sequence per reward), got "
            f"{getattr(model, 'arch', type(model).__name__)}"
        )
    try:
        check_packable(model.backbone_config, model.pooling)
    except ValueError as exc:
        raise ConfigError(f"train.packing=true: {exc}") from exc
    return int(tokenizer.pad_token_id)


def record_kind(records: Sequence[Any]) -> str:
    """ "pairs", "groups" or "ratings" from the records' type (all records must share it)."""
    kinds = {type(r) for r in records}
    if len(kinds) != 1 or next(iter(kinds)) not in _KINDS:
        raise TypeError(
            "records must all be one of PreferencePair, RankedGroup, RatedResponse; "
            f"got {sorted(k.__name__ for k in kinds)}"
        )
    return _KINDS[next(iter(kinds))]


class Objective(ABC):
    """What one record kind brings to the kind-agnostic loop: batches, loss, metrics, texts.

    The loop calls ``collate`` for every micro-batch, runs the model on ``batch["features"]``, then ``loss`` (training)
    or ``predict`` (validation, reward statistics); everything kind-specific lives behind these methods.

    Args:
        cfg: the run's Config (data.max_len_tokens, loss.*, train.seed are read).
        model: the unwrapped model (its ``input_kind``, ``metadata`` and ``model_cfg`` are read).
        tokenizer: its tokenizer.

    Subclasses take the training records as well, where they check them against the model or resample them.
    """

    kind: ClassVar[str]

    def __init__(self, cfg: Config, model: nn.Module, tokenizer: Any) -> None:
        self.cfg = cfg
        self.model = model
        self.collator = self.build_collator(
            tokenizer, max_len_tokens=cfg.data.max_len_tokens, input_kind=model.input_kind
        )
        self.pack_pad_id = packing_pad_id(model, tokenizer) if cfg.train.packing else None

    # -------------------------------------------------------------------------------- kind-specific
    @abstractmethod
    def build_collator(self, tokenizer: Any, *, max_len_tokens: int, input_kind: str) -> Any:
        """The ``raw_rm.data.batching`` collator for this kind's records."""

    @abstractmethod
    def loss(self, output: Any, batch: Batch, *, training: bool) -> tuple[torch.Tensor, Parts]:
        """Scalar loss of one batch and the detached tensors its metrics need (``chosen``/``rejected``, ``rewards``).

        ``training`` False leaves out what only training applies (bootstrap resampling of ensemble heads).
        """

    @abstractmethod
    def n_items(self, batch: Batch) -> int:
        """Records (pairs, groups, rated responses) in ``batch``."""

    @abstractmethod
    def record_texts(self, record: Any) -> list[tuple[str, str]]:
        """(prompt, response) of every sequence of one record, in the collator's row order."""

    @abstractmethod
    def step_metrics(self, parts: list[Parts]) -> dict[str, float]:
        """accuracy, margin_mean, reward_mean, reward_std of one optimiser step's micro-batches (nan: undefined)."""

    @abstractmethod
    def val_metrics(self, parts: list[Parts], records: Sequence[Any]) -> dict[str, float]:
        """The kind's ``val_*`` metrics over ``predict``'s parts of ``records`` (val_loss and reward stats aside)."""

    # ------------------------------------------------------------------------------------ shared
    def collate(self, records: Sequence[Any], indices: Sequence[int]) -> Batch:
        """The collator's batch for ``records[indices]`` plus ``index`` (the indices, long)."""
        batch = dict(self.collator([records[i] for i in indices]))
        batch["index"] = torch.as_tensor(list(indices), dtype=torch.long)
        if self.pack_pad_id is not None:  # train.packing: rows as before for the loss, no pad tokens computed
            batch["features"] = pack_features(
                batch["features"], pad_id=self.pack_pad_id, row_tokens=self.cfg.data.max_len_tokens
            )
            batch["n_padded"] = batch["features"]["input_ids"].numel() - int(batch["n_tokens"])
        return batch

    def share(self, batch: Batch) -> float:
        """A micro-batch's weight in its optimiser step: its items, or their summed example weights when the loss is
        a weighted mean over them, so accumulated micro-batches reproduce the loss of one big batch."""
        return float(self.n_items(batch))

    def predict(self, output: Any, batch: Batch) -> Parts:
        """``loss``'s parts (no training-only terms) plus ``loss``, ``n`` (items), ``n_truncated`` and ``index``."""
        loss, parts = self.loss(output, batch, training=False)
        return {
            **parts,
            "loss": loss.detach().float(),
            "n": torch.tensor(self.n_items(batch)),
            "n_truncated": torch.tensor(int(batch.get("n_truncated", 0))),
            "index": batch["index"],
        }

    def rewards(self, parts: list[Parts]) -> torch.Tensor:
        """Every reward of ``parts`` (one per sequence): ``rewards`` where given, else chosen then rejected per part."""
        return torch.cat([p["rewards"] if "rewards" in p else torch.cat([p["chosen"], p["rejected"]]) for p in parts])

    @property
    def supports_uncertainty_weighting(self) -> bool:
        """Whether ``loss.uncertainty_weighting`` can act (it needs pairs and an ensemble of heads)."""
        return False

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups of the objective's own trainable state (the learned temperature), beside the
        model's; the loop adds them to its optimiser."""
        return []

    def finish(self, model: nn.Module) -> None:
        """Called once when training ends, before reward statistics are stored: write what the objective learned
        into the model (e.g. ``metadata.temperature``). Most objectives learn nothing beside the model's weights."""
        return None


class PreferenceObjective(Objective):
    """Objectives whose parts hold ``chosen`` and ``rejected`` rewards (B,): accuracy and calibration of their
    difference. A multi-head ensemble model trains every head on its own loss (``per_head_loss``), each on its own
    bootstrap resample of the training records when ``model.bootstrap`` (``self.bootstrap``, (N_train, K) or None).
    """

    def __init__(self, cfg: Config, model: nn.Module, tokenizer: Any, train_records: Sequence[Any]) -> None:
        super().__init__(cfg, model, tokenizer)
        self.n_heads = num_heads(model)
        self.bootstrap = bootstrap_counts(model, len(train_records), cfg.train.seed)

    def step_metrics(self, parts: list[Parts]) -> dict[str, float]:
        delta = torch.cat([p["chosen"] for p in parts]) - torch.cat([p["rejected"] for p in parts])
        rewards = self.rewards(parts)
        return {
            "accuracy": float((delta > 0).float().mean()) if delta.numel() else float("nan"),
            "margin_mean": float(delta.mean()) if delta.numel() else float("nan"),
            **reward_stats(rewards),
        }

    def val_metrics(self, parts: list[Parts], records: Sequence[Any]) -> dict[str, float]:
        chosen = torch.cat([p["chosen"] for p in parts]).cpu()
        rejected = torch.cat([p["rejected"] for p in parts]).cpu()
        acc = M.preference_accuracy(chosen, rejected, n_boot=self.cfg.eval.n_boot, seed=self.cfg.train.seed)
        temperature = float(getattr(getattr(self.model, "metadata", None), "temperature", 1.0) or 1.0)
        # P(chosen > rejected) under the stored calibration temperature; labels all 1 (metrics symmetrises).
        cal = M.calibration_error(M.pair_probabilities((chosen - rejected).numpy(), temperature))
        return {
            "val_accuracy": float(acc["accuracy"]),
            "val_accuracy_ci_low": float(acc["ci_low"]),
            "val_accuracy_ci_high": float(acc["ci_high"]),
            "val_nll": float(cal["nll"]),
            "val_ece": float(cal["ece"]),
        }


def reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    """reward_mean and reward_std (population) of a flat tensor of rewards."""
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 0.0,
    }


# ------------------------------------------------------------------------------------ ensemble heads
def num_heads(model: nn.Module) -> int:
    """Heads of a multi-head ensemble model (``model.arch=multihead``), else 1."""
    model_cfg = getattr(model, "model_cfg", None)
    if model_cfg is not None and getattr(model_cfg, "arch", None) == "multihead":
        return int(model_cfg.num_heads)
    return 1


def bootstrap_counts(model: nn.Module, n_records: int, seed: int) -> torch.Tensor | None:
    """Fixed Poisson(1) counts (n_records, K) per (training example, head): each head sees its own bootstrap
    resample (``model.bootstrap`` on a multi-head model); None otherwise."""
    heads = num_heads(model)
    if heads < 2 or not getattr(getattr(model, "model_cfg", None), "bootstrap", False):
        return None
    gen = torch.Generator().manual_seed(seed + 7919)
    if hasattr(model, "bootstrap_mask"):
        return model.bootstrap_mask(n_records, generator=gen)
    return torch.poisson(torch.ones(n_records, heads), generator=gen)


def head_weight(
    counts: torch.Tensor | None, weight: torch.Tensor | None, batch: Batch, head: int, device: torch.device
) -> torch.Tensor | None:
    """Example weights times head ``head``'s bootstrap counts for the batch's records (``counts`` None: ``weight``).

    A batch in which a head's resample holds none of the examples gives that head loss 0 (weighted_mean).
    """
    if counts is None:
        return weight
    picked = counts[batch["index"], head].to(device)  # (B,)
    return picked if weight is None else weight * picked


def per_head_loss(members: torch.Tensor, head_loss: Any) -> torch.Tensor:
    """Mean over heads of ``head_loss(k, members[:, k])``: every head of the multi-head ensemble gets its own loss
    (on its own bootstrap resample when model.bootstrap), so the heads stay an ensemble instead of one reward
    split K ways."""
    members = members.float()
    return torch.stack([head_loss(k, members[:, k]) for k in range(members.shape[1])]).mean()
