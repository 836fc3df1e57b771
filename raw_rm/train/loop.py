"""THE training loop: plain torch, one code path for pairs, k-wise groups and per-aspect ratings.

Every later layer reuses it unchanged. Ray Train, Ray Tune and MLflow touch it only through
``prepare_model`` (wraps the model, e.g. DDP; default identity), ``rank``/``world_size`` (sampler shards) and
``callbacks`` (``on_step``, ``on_eval``, ``on_checkpoint``, ``on_fit_end``); checkpoints are plain folders that
``save_checkpoint`` writes and ``fit(resume_from=...)`` reads, so an edge can move them wherever it likes.

    trainer = RewardModelTrainer(cfg, model, tokenizer, train_records, val_records)
    result = trainer.fit()            # FitResult; model.metadata now holds reward_mean/std
    result.final_metrics["val_accuracy"]

A checkpoint folder holds: ``model.pt`` (unwrapped state dict; gathered in full when FSDP shards the model, see
``raw_rm/train/fsdp.py``), ``optimizer.pt`` (keyed by parameter name under FSDP), ``scheduler.pt``, ``scaler.pt``
(fp16 only), ``best_model.pt`` (the best weights so far, when restore-best needs them), ``rng.pt`` (torch, numpy,
python, cuda), ``trainer_state.json`` (step, epoch, batch index within the epoch, best metric, patience counter,
eval history) and ``config.json`` (``asdict(cfg)``). Resuming from it mid-epoch continues with the very next
micro-batch, so the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from raw_rm.config import Config, ConfigError
from raw_rm.data.records import PreferencePair, RankedGroup, RatedResponse
from raw_rm.train import fsdp

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"


# ------------------------------------------------------------------------------------------ results
@dataclass
class FitResult:
    """What ``fit()`` returns; ``final_metrics`` are the validation metrics of the weights left in the model."""

    steps: int  # optimiser steps taken in total (including those before a resume)
    epochs: float  # epochs completed (fractional when max_steps or early stopping cut one short)
    stopped_early: bool
    best_metric: float | None  # best value of cfg.train.early_stopping_metric seen
    best_step: int | None
    final_metrics: dict[str, float]
    history: list[dict[str, float]]  # one entry per evaluation (with "step")
    train_time_s: float  # wall time inside training steps (excludes evaluation and checkpoints)
    pairs_per_s: float  # training items (pairs, groups or rated responses) per second of train_time_s
    tokens_per_s: float  # real (non-pad) tokens per second of train_time_s
    padding_fraction: float  # pad positions / all positions over training batches
    n_truncated: int  # sequences truncated to max_len_tokens over this fit (all epochs)
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    train_cpu_s: float = 0.0  # process CPU time inside training steps (all threads): a contention-robust cost


@dataclass
class TrainResult:
    """What ``train_local`` (and ``train_ray``) return."""

    model_dir: str  # the saved model (``load_model`` / ``RewardModelInference`` open it)
    metrics: dict[str, float]  # final validation metrics plus throughput
    fit: FitResult | None = None
    config: dict[str, Any] = field(default_factory=dict)  # asdict(cfg) of the run
    data_report: str = ""  # the loader's summary (kept / dropped records)


class Callback(Protocol):
    """Everything outside the loop (MLflow, Ray Train, Tune) plugs in here. Methods are optional."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, path: str | None, metrics: dict[str, float]) -> None: ...  # path None on ranks > 0

    def on_fit_end(self, result: FitResult) -> None: ...


class StopTraining(Exception):
    """A callback may raise this (e.g. a Tune scheduler decision) to end ``fit`` cleanly after the current step."""


# ------------------------------------------------------------------------------------- precision
def cpu_supports_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` flags).

    Without it, bf16 autocast emulates and ran 3.5x slower than fp32 here (shared/STACK_NOTES.md).
    """
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Map ``train.precision`` to what runs: "fp32", "bf16" or "fp16".

    Raises:
        ConfigError: fp16 asked for on a device without CUDA (fp16 needs a GradScaler on a GPU).
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs a CUDA device (it trains with a gradient scaler); this run is on "
            f"{device.type}: use train.precision=bf16 or fp32 (auto picks bf16 where the CPU supports it)"
        )
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        logger.warning("train.precision=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): expect it slower than fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: expected one of auto, fp32, bf16, fp16, got {precision!r}")
    return precision


# -------------------------------------------------------------------------------------- schedule
def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimiser step ``s``: linear warm-up, then cosine / linear decay to 0, or constant."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"train.schedule: expected cosine, linear or constant, got {schedule!r}")
    total_steps = max(1, total_steps)

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only: biases and norm weights (1-D tensors) are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


# ----------------------------------------------------------------------------------------- seeds
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step under ``<output_dir>/checkpoints``, or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def _record_texts(record: Any) -> list[tuple[str, str]]:
    """(prompt, response) pairs of one record, in the collator's row order."""
    if isinstance(record, PreferencePair):
        return [(record.prompt, record.chosen), (record.prompt, record.rejected)]
    if isinstance(record, RankedGroup):
        return [(record.prompt, r) for r in record.responses]
    if isinstance(record, RatedResponse):
        return [(record.prompt, record.response)]
    raise TypeError(f"expected PreferencePair, RankedGroup or RatedResponse, got {type(record).__name__}")


def record_kind(records: Sequence[Any]) -> str:
    """"pairs", "groups" or "ratings" from the records' type (all records must share it)."""
    kinds = {type(r) for r in records}
    names = {PreferencePair: "pairs", RankedGroup: "groups", RatedResponse: "ratings"}
    if len(kinds) != 1 or next(iter(kinds)) not in names:
        raise TypeError(f"records must all be one of PreferencePair, RankedGroup, RatedResponse; got {sorted(k.__name__ for k in kinds)}")
    return names[next(iter(kinds))]


# --------------------------------------------------------------------------------------- trainer
class RewardModelTrainer:
    """Train one reward model on pairs, k-wise groups or per-aspect ratings.

    Args:
        cfg: the run's Config (data.max_len_tokens, loss.*, train.* are read here).
        model: a ``RewardModelBase`` (``forward(**features) -> RewardOutput``, ``metadata``, ``input_kind``).
        tokenizer: its tokenizer.
        train_records / val_records: lists of one record type (kind inferred from the records).
        callbacks: objects with any of ``on_step``, ``on_eval``, ``on_checkpoint``, ``on_fit_end``.
        prepare_model: wraps the model for training (Ray: ``ray.train.torch.prepare_model``); default identity.
            Checkpoints and metadata always use the unwrapped model (an FSDP-sharded one is gathered in full).
        rank / world_size: shard of the training data this process sees; only rank 0 logs, shows progress and
            writes checkpoints.
        device: where to train; None = CUDA when available (and no prepare_model), else the model's device.
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        tokenizer: Any,
        train_records: Sequence[Any],
        val_records: Sequence[Any],
        *,
        callbacks: Iterable[Any] = (),
        prepare_model: Callable[[nn.Module], nn.Module] | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        from raw_rm.losses import build_loss, build_pair_terms, build_ranking_loss

        if not train_records:
            raise ValueError("no training records: the data source gave 0 usable records (see the loader's report)")
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.train_records = list(train_records)
        self.val_records = list(val_records)
        self.kind = record_kind(self.train_records)
        if self.val_records and record_kind(self.val_records) != self.kind:
            raise TypeError(f"train records are {self.kind} but validation records are {record_kind(self.val_records)}")
        self.callbacks = list(callbacks)
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        tc = cfg.train
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if tc.pin_malloc_threshold:
            from raw_rm.train.allocator import pin_mmap_threshold

            pin_mmap_threshold()
        seed_everything(tc.seed)

        if device is None:
            device = "cuda" if torch.cuda.is_available() and prepare_model is None else _model_device(model)
        self.device = torch.device(device)
        if prepare_model is None:
            self.model.to(self.device)
            self.train_model = self.model
        else:
            self.train_model = prepare_model(self.model)
            self.device = _model_device(self.train_model)
        self.precision = resolve_precision(tc.precision, self.device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        self.loss_fn = build_loss(cfg.loss) if self.kind == "pairs" else None
        self.ranking_loss_fn = build_ranking_loss(cfg.loss) if self.kind == "groups" else None
        self.pair_terms = build_pair_terms(
            cfg.loss, length_head=bool(getattr(getattr(model, "model_cfg", None), "length_head", False)),
            data_kind=self.kind,
        )
        # Only multi-objective models fill metadata.aspects (their head order); others have none.
        self.aspects = list(getattr(getattr(model, "metadata", None), "aspects", None) or [])
        self._check_model_fits_data()
        self.collator = self._build_collator()
        self.n_heads = self._num_heads()
        if self.n_heads > 1 and (self.pair_terms.active or self.pair_terms.temperature is not None):
            raise ConfigError(
                "calibration and length terms (loss.*_coef, loss.learned_temperature) act on one reward; "
                f"model.arch=multihead trains {self.n_heads} heads each on its own loss: use model.arch=concat"
            )
        if cfg.loss.uncertainty_weighting and (self.n_heads < 2 or self.kind != "pairs"):
            raise ConfigError(
                "loss.uncertainty_weighting=true needs pairs and an ensemble of heads to measure disagreement: "
                "use data.kind=pairs with model.arch=multihead (model.num_heads >= 2), or set loss.uncertainty_weighting=false"
            )
        self.bootstrap = self._bootstrap_weights()  # (N_train, K) Poisson(1) counts or None

        from raw_rm.data.batching import LengthGroupedSampler

        self.train_lengths = self._lengths(self.train_records)
        self.sampler = LengthGroupedSampler(
            self.train_lengths, tc.batch_size, seed=tc.seed, shuffle=True, rank=rank, world_size=world_size
        )
        self.batches_per_epoch = len(self._epoch_batches(0))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / tc.grad_accum_steps)
        self.total_steps = tc.max_steps if tc.max_steps is not None else tc.epochs * self.steps_per_epoch
        self.warmup_steps = int(math.ceil(tc.warmup_ratio * self.total_steps))
        self.optimizer = build_optimizer(self.model, lr=tc.lr, weight_decay=tc.weight_decay)
        if self.pair_terms.temperature is not None:
            self.pair_terms.temperature.to(self.device)
            self.optimizer.add_param_group(
                {"params": [self.pair_terms.temperature.log_t], "lr": cfg.loss.temperature_lr, "weight_decay": 0.0})
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, self.warmup_steps, tc.schedule)
        )
        # loop state (all of it goes into checkpoints)
        self.step = 0
        self.epoch = 0
        self.batch_index = 0  # next micro-batch within self.epoch
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evals_without_improvement = 0
        self.history: list[dict[str, float]] = []
        self.last_checkpoint: str | None = None
        self._fail_marker = Path(tc.output_dir) / f".fail_at_step_{tc.fail_at_step}.done"
        logger.info(
            "trainer: %d %s for training, %d for validation; %d steps (%d per epoch, batch %d x accum %d x %d workers); "
            "precision %s on %s",
            len(self.train_records), self.kind, len(self.val_records), self.total_steps, self.steps_per_epoch,
            tc.batch_size, tc.grad_accum_steps, world_size, self.precision, self.device,
        )

    # ------------------------------------------------------------------------------ set-up helpers
    def _check_model_fits_data(self) -> None:
        if self.kind == "ratings" and not self.aspects:
            raise ConfigError(
                "data.kind=ratings trains per-aspect heads with MSE: use model.arch=multi_objective "
                "(or give pairs with an aspect field for a single-reward model)"
            )
        if self.kind == "ratings":
            known = set(self.aspects)
            seen = {a for r in self.train_records for a in r.ratings}
            if not seen & known:
                raise ConfigError(
                    f"none of the ratings' aspects {sorted(seen)} is one of model.aspects {self.aspects}: "
                    "set model.aspects to the aspects in the data"
                )
        if self.kind == "pairs":
            asked = {r.aspect for r in self.train_records if r.aspect is not None}
            if asked and self.aspects:
                unknown = sorted(asked - set(self.aspects))
                if unknown:
                    raise ConfigError(
                        f"pairs name aspects {unknown} that are not in model.aspects {self.aspects}: add them to "
                        "model.aspects or drop the aspect field"
                    )

    def _build_collator(self) -> Callable[[list[Any]], dict[str, Any]]:
        from raw_rm.data import batching

        kwargs = {"max_len_tokens": self.cfg.data.max_len_tokens, "input_kind": self.model.input_kind}
        if self.kind == "pairs":
            held_out = self.cfg.loss.calibration_fraction if self.cfg.loss.learned_temperature else 0.0
            return batching.PairCollator(self.tokenizer, calibration_fraction=held_out, **kwargs)
        if self.kind == "groups":
            return batching.GroupCollator(self.tokenizer, **kwargs)
        return batching.RatingCollator(self.tokenizer, aspects=self.aspects, **kwargs)

    def _num_heads(self) -> int:
        model_cfg = getattr(self.model, "model_cfg", None)
        if model_cfg is not None and getattr(model_cfg, "arch", None) == "multihead":
            return int(model_cfg.num_heads)
        return 1

    def _bootstrap_weights(self) -> torch.Tensor | None:
        """Fixed Poisson(1) counts per (training example, head): each head sees its own bootstrap resample."""
        model_cfg = getattr(self.model, "model_cfg", None)
        if self.n_heads < 2 or not getattr(model_cfg, "bootstrap", False):
            return None
        gen = torch.Generator().manual_seed(self.cfg.train.seed + 7919)
        n = len(self.train_records)
        if hasattr(self.model, "bootstrap_mask"):
            return self.model.bootstrap_mask(n, generator=gen)
        return torch.poisson(torch.ones(n, self.n_heads), generator=gen)

    def _lengths(self, records: Sequence[Any]) -> list[int]:
        """Token length per record (longest of its sequences, capped at max_len_tokens) for length grouping."""
        texts = [p + " " + r for rec in records for p, r in _record_texts(rec)]
        owners = [i for i, rec in enumerate(records) for _ in _record_texts(rec)]
        lengths = [0] * len(records)
        cap = self.cfg.data.max_len_tokens
        chunk = 2048
        for start in range(0, len(texts), chunk):
            ids = self.tokenizer(texts[start:start + chunk], add_special_tokens=False, truncation=False)["input_ids"]
            for j, seq in enumerate(ids):
                owner = owners[start + j]
                lengths[owner] = max(lengths[owner], min(cap, len(seq) + 2))
        return lengths

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        return [list(b) for b in self.sampler]

    # ------------------------------------------------------------------------------------ batches
    def collate(self, indices: Sequence[int], records: Sequence[Any] | None = None) -> dict[str, Any]:
        """The batch dict for ``records[indices]`` (training records by default), with ``index`` and ``aspect_index``."""
        records = self.train_records if records is None else records
        items = [records[i] for i in indices]
        batch = dict(self.collator(items))
        batch["index"] = torch.as_tensor(list(indices), dtype=torch.long)
        if self.kind == "pairs" and self.aspects:
            aspect_index = [self.aspects.index(r.aspect) if r.aspect is not None else -1 for r in items]
            batch["aspect_index"] = torch.as_tensor(aspect_index, dtype=torch.long)
        return batch

    def _features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        features = batch.get("features")
        if features is None:
            raise KeyError(f"batch has no 'features' (keys: {sorted(batch)})")
        return {k: v.to(self.device, non_blocking=True) for k, v in features.items()}

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None)

    # ------------------------------------------------------------------------------------- losses
    def compute_loss(self, output: Any, batch: dict[str, Any], *, training: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch and the detached tensors the metrics need (``chosen``/``rejected`` or ``rewards``)."""
        if self.kind == "pairs":
            return self._pairs_loss(output, batch, training=training)
        if self.kind == "groups":
            return self._groups_loss(output, batch, training=training)
        return self._ratings_loss(output, batch)

    def _pairs_loss(self, output: Any, batch: dict[str, Any], *, training: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from raw_rm.losses import example_weights, reward_regularisers

        b = int(batch["n_pairs"])
        rewards = self._aspect_rewards(output.rewards, output.aspects, batch).float()  # (2B,): chosen rows, then rejected
        chosen, rejected = rewards[:b], rewards[b:]
        margin = batch.get("margin")
        if margin is not None:
            margin = margin.to(self.device, dtype=torch.float32)
        data_weight = batch["weight"].to(self.device, dtype=torch.float32) if "weight" in batch else None
        members = output.members
        if members is not None and self.n_heads > 1:
            # The multi-head ensemble: every head gets its own loss (on its own bootstrap resample when
            # model.bootstrap), so the heads stay an ensemble instead of one reward split K ways.
            members = members.float()
            weight = example_weights(self.cfg.loss, data_weight, members[:b], members[b:])
            losses = [
                self.loss_fn(members[:b, k], members[b:, k], margin=margin, weight=self._bootstrap_weight(weight, batch, k, training))
                for k in range(members.shape[1])
            ]
            loss = torch.stack(losses).mean()
        else:
            length_rewards = output.length_rewards
            ortho = self.model.head_orthogonality() if self.cfg.loss.orthogonal_coef > 0 else None
            loss, _ = self.pair_terms(
                self.loss_fn, chosen, rejected, margin=margin,
                weight=example_weights(self.cfg.loss, data_weight),
                lengths=batch["response_tokens"].to(self.device) if self.pair_terms.needs_lengths else None,
                length_rewards=None if length_rewards is None else length_rewards.float(),
                heldout=batch["calibration"].to(self.device) if "calibration" in batch else None,
                orthogonality=ortho)
        loss = loss + reward_regularisers(self.cfg.loss, chosen, rejected)
        return loss, {"chosen": chosen.detach(), "rejected": rejected.detach()}

    def _bootstrap_weight(self, weight: torch.Tensor | None, batch: dict[str, Any], head: int, training: bool) -> torch.Tensor | None:
        """Example weights times head ``head``'s Poisson(1) bootstrap counts (training only).

        A batch in which a head's resample holds none of the examples gives that head loss 0 (weighted_mean).
        """
        if not training or self.bootstrap is None:
            return weight
        counts = self.bootstrap[batch["index"], head].to(self.device)  # (B,)
        return counts if weight is None else weight * counts

    def _aspect_rewards(self, rewards: torch.Tensor, aspects: torch.Tensor | None, batch: dict[str, Any]) -> torch.Tensor:
        """Pairs judged on one aspect train that aspect's head; the others train the combined reward."""
        index = batch.get("aspect_index")
        if index is None or aspects is None or bool((index < 0).all()):
            return rewards
        index = index.to(self.device).repeat(2)  # (2B,): the same aspect for chosen and rejected rows
        picked = aspects.gather(1, index.clamp_min(0)[:, None]).squeeze(1)
        return torch.where(index >= 0, picked, rewards)

    def _groups_loss(self, output: Any, batch: dict[str, Any], *, training: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index = batch["group_rewards_index"].to(self.device)  # (G, Kmax) rows of the flattened responses
        ranks = batch["ranks"].to(self.device)
        mask = batch["mask"].to(self.device)
        rewards = output.rewards.float()
        grouped = rewards[index]  # (G, Kmax); padded slots hold some row's reward, masked out by the loss
        members = output.members
        if members is not None and self.n_heads > 1:
            members = members.float()
            losses = [
                self.ranking_loss_fn(members[:, k][index], ranks, mask, weight=self._bootstrap_weight(None, batch, k, training))
                for k in range(members.shape[1])
            ]
            loss = torch.stack(losses).mean()
        else:
            loss = self.ranking_loss_fn(grouped, ranks, mask)
        chosen, rejected = _group_pairs(grouped.detach(), ranks, mask)
        return loss, {"chosen": chosen, "rejected": rejected, "rewards": rewards.detach()}

    def _ratings_loss(self, output: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if output.aspects is None:
            raise ConfigError("data.kind=ratings needs a model with per-aspect heads (model.arch=multi_objective)")
        target = batch["ratings"].to(self.device, dtype=torch.float32)  # (N, A)
        mask = batch["ratings_mask"].to(self.device)
        pred = output.aspects.float()
        sq = (pred - target).pow(2) * mask
        # MSE per aspect over the rows that rate it, then the mean over aspects that appear in the batch.
        per_aspect = sq.sum(0) / mask.sum(0).clamp_min(1)
        present = mask.any(0)
        loss = per_aspect[present].mean() if bool(present.any()) else pred.sum() * 0.0
        return loss, {"rewards": output.rewards.detach().float(), "pred": pred.detach(), "target": target, "mask": mask}

    # -------------------------------------------------------------------------------------- steps
    def train_step(self, batch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over one batch, or over a list of micro-batches (gradient accumulation).

        Micro-batch losses are weighted by their share of the items, so accumulating micro-batches gives the
        same gradient as one batch of all their items. Returns the step's metrics (loss, accuracy, reward_mean,
        reward_std, margin_mean, grad_norm, lr, n_items, n_tokens, n_padded, n_truncated).
        """
        micro = batch if isinstance(batch, list) else [batch]
        self.train_model.train()
        n_total = sum(_n_items(b, self.kind) for b in micro)
        shares = [self._share(b) for b in micro]
        if sum(shares) <= 0:  # every example weighted 0: fall back to item counts (the loss is 0 anyway)
            shares = [float(_n_items(b, self.kind)) for b in micro]
        share_total = sum(shares)
        losses, collected = [], []
        for i, mb in enumerate(micro):
            # DDP: all-reduce gradients only on the last micro-batch of the step (forward and backward inside)
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else fsdp.no_gradient_sync(self.train_model):
                loss, parts = self._micro_loss(mb)
                share = shares[i] / share_total
                scaled = loss * share
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            losses.append(float(loss.detach()) * share)
            collected.append(parts)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.max_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        # FSDP: the norm of the full gradient over DTensor shards (raw_rm/train/fsdp.py); else clip_grad_norm_
        grad_norm = fsdp.clip_grad_norm(params, max_norm if max_norm is not None else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self._batch_metrics(collected)
        metrics.update(
            loss=sum(losses), grad_norm=float(grad_norm), lr=float(lr), n_items=float(n_total),
            n_tokens=float(sum(int(b.get("n_tokens", 0)) for b in micro)),
            n_padded=float(sum(int(b.get("n_padded", 0)) for b in micro)),
            n_truncated=float(sum(int(b.get("n_truncated", 0)) for b in micro)),
        )
        return metrics

    def _micro_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self._autocast():
            output = self.train_model(**self._features(batch))
        loss, parts = self.compute_loss(output, batch, training=True)
        if self.cfg.loss.param_l2_coef > 0:
            from raw_rm.losses import param_l2

            loss = loss + param_l2(self.model.parameters(), self.cfg.loss.param_l2_coef)
        return loss, parts

    def _share(self, batch: dict[str, Any]) -> float:
        """A micro-batch's weight in its optimiser step: its items, or its summed example weights when the loss
        is a weighted mean over them, so accumulated micro-batches reproduce the loss of one big batch."""
        if self.kind == "pairs" and self.cfg.loss.use_weights and "weight" in batch:
            return float(batch["weight"].sum())
        return float(_n_items(batch, self.kind))

    def _batch_metrics(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.kind in ("pairs", "groups"):
            chosen = torch.cat([p["chosen"] for p in parts])
            rejected = torch.cat([p["rejected"] for p in parts])
            delta = chosen - rejected
            rewards = torch.cat([p["rewards"] for p in parts]) if "rewards" in parts[0] else torch.cat([chosen, rejected])
            out["accuracy"] = float((delta > 0).float().mean()) if delta.numel() else float("nan")
            out["margin_mean"] = float(delta.mean()) if delta.numel() else float("nan")
        else:
            rewards = torch.cat([p["rewards"] for p in parts])
            out["accuracy"] = float("nan")
            out["margin_mean"] = float("nan")
        out["reward_mean"] = float(rewards.mean())
        out["reward_std"] = float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 0.0
        return out

    # ----------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def predict_records(self, records: Sequence[Any], *, batch_size: int | None = None, fp32: bool = True) -> list[dict[str, torch.Tensor]]:
        """Run the model over ``records`` in length-sorted batches; per batch: loss and the metric tensors.

        ``fp32`` (the default for validation) runs without autocast: bf16 rounds rewards to ~3 significant
        digits, which turns close pairs into ties and ties count as errors in accuracy.
        """
        if not records:
            return []
        batch_size = batch_size or max(2 * self.cfg.train.batch_size, 8)
        lengths = self._lengths(records)
        order = sorted(range(len(records)), key=lambda i: lengths[i])
        self.train_model.eval()
        out = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self.collate(idx, records)
            with self._autocast() if not fp32 else contextlib.nullcontext():
                output = self.train_model(**self._features(batch))
            loss, parts = self.compute_loss(output, batch, training=False)
            parts = dict(parts)
            parts["loss"] = loss.detach().float()
            parts["n"] = torch.tensor(_n_items(batch, self.kind))
            parts["n_truncated"] = torch.tensor(int(batch.get("n_truncated", 0)))
            if output.members is not None and self.kind == "pairs":
                b = int(batch["n_pairs"])
                parts["member_delta"] = (output.members[:b] - output.members[b:]).detach().float()
            out.append(parts)
        return out

    def evaluate(self, records: Sequence[Any] | None = None) -> dict[str, float]:
        """Validation metrics: val_loss, val_accuracy, val_nll, val_ece, val_reward_mean, val_reward_std (+ kind extras)."""
        from raw_rm import metrics as M

        records = self.val_records if records is None else records
        if not records:
            return {}
        parts = self.predict_records(records)
        n = torch.stack([p["n"] for p in parts]).float()
        # .cpu(): the losses sit on the model's device, the counts on the CPU (a CUDA x CPU product raises)
        result = {"val_loss": float((torch.stack([p["loss"] for p in parts]).cpu() * n).sum() / n.sum())}
        if self.kind in ("pairs", "groups"):
            chosen = torch.cat([p["chosen"] for p in parts]).cpu()
            rejected = torch.cat([p["rejected"] for p in parts]).cpu()
            rewards = torch.cat([p.get("rewards", torch.cat([p["chosen"], p["rejected"]])) for p in parts]).cpu()
            acc = M.preference_accuracy(chosen, rejected, n_boot=200, seed=self.cfg.train.seed)
            result["val_accuracy"] = float(acc["accuracy"])
            result["val_accuracy_ci_low"] = float(acc["ci_low"])
            result["val_accuracy_ci_high"] = float(acc["ci_high"])
            temperature = float(getattr(getattr(self.model, "metadata", None), "temperature", 1.0) or 1.0)
            # P(chosen > rejected) under the stored calibration temperature; labels all 1 (metrics symmetrises).
            cal = M.calibration_error(M.pair_probabilities((chosen - rejected).numpy(), temperature))
            result["val_nll"] = float(cal["nll"])
            result["val_ece"] = float(cal["ece"])
            if self.kind == "pairs" and "member_delta" in parts[0]:
                member_delta = torch.cat([p["member_delta"] for p in parts]).cpu()
                result["val_member_accuracy_mean"] = float((member_delta > 0).float().mean())
        else:
            rewards = torch.cat([p["rewards"] for p in parts]).cpu()
            pred = torch.cat([p["pred"] for p in parts]).cpu()
            target = torch.cat([p["target"] for p in parts]).cpu()
            mask = torch.cat([p["mask"] for p in parts]).cpu()
            for a, name in enumerate(self.aspects):
                m = mask[:, a]
                if bool(m.any()):
                    result[f"val_mse_{name}"] = float((pred[m, a] - target[m, a]).pow(2).mean())
            result["val_accuracy"] = _ratings_pair_accuracy([records[i] for i in _sorted_order(self._lengths(records))], rewards, self.aspects, self._aspect_weights())
        result["val_reward_mean"] = float(rewards.mean())
        result["val_reward_std"] = float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 0.0
        result["val_n_truncated"] = float(sum(int(p["n_truncated"]) for p in parts))
        return result

    def _aspect_weights(self) -> list[float]:
        weights = getattr(getattr(self.model, "metadata", None), "aspect_weights", None)
        return list(weights) if weights else [1.0 / len(self.aspects)] * len(self.aspects)

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Loop position and early-stopping state (JSON-serialisable)."""
        return {
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
            "best_metric": self.best_metric, "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement, "history": self.history,
            # the sampler's own position format, for readers of the checkpoint; resume uses epoch + batch_index
            "sampler": {"epoch": self.epoch, "position": self.batch_index, "seed": self.cfg.train.seed, "world_size": self.world_size},
            "precision": self.precision, "world_size": self.world_size,
            "fsdp": fsdp.is_sharded(self.model),  # optimizer.pt keyed by parameter name (FSDP) or by position
        }

    def save_checkpoint(self, path: str | Path | None = None) -> str | None:
        """Write a resumable checkpoint folder (default ``<output_dir>/checkpoints/step_<N>``) and return its path.

        FSDP-sharded model: every rank must call it (the full state is gathered); rank 0 writes, the others get None.
        """
        model_state = fsdp.model_state_dict(self.model)
        optimizer_state = fsdp.optimizer_state_dict(self.model, self.optimizer)
        if not self.is_main:
            return None
        path = Path(path) if path is not None else Path(self.cfg.train.output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(model_state, tmp / "model.pt")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        if self.scaler is not None:
            torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
        if self.best_state is not None:
            torch.save(self.best_state, tmp / "best_model.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(self.state_dict(), indent=1))
        (tmp / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1))
        if path.exists():
            _rmtree(path)
        os.replace(tmp, path)  # a crash mid-write leaves only a .tmp folder, never a half checkpoint
        self.last_checkpoint = str(path)
        return str(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimiser, scheduler, scaler, RNG and loop position from a checkpoint folder."""
        path = Path(path)
        state_file = path / "trainer_state.json"
        if not state_file.exists():
            raise FileNotFoundError(f"{path}: not a raw_rm checkpoint (no trainer_state.json)")
        saved_fsdp, is_fsdp = bool(json.loads(state_file.read_text()).get("fsdp", False)), fsdp.is_sharded(self.model)
        if saved_fsdp != is_fsdp:
            names = {True: "ray.strategy=fsdp", False: "ray.strategy=ddp (or a local run)"}
            raise ValueError(
                f"{path}: checkpoint written under {names[saved_fsdp]} cannot resume under {names[is_fsdp]} (the "
                f"optimizer state is laid out differently); resume with {names[saved_fsdp]}, or start from its weights "
                f"with model.init_from after saving the model"
            )
        fsdp.load_model_file(self.model, path / "model.pt", device=self.device)
        fsdp.load_optimizer_file(self.model, self.optimizer, path / "optimizer.pt", device=self.device)
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        if self.scaler is not None and (path / "scaler.pt").exists():
            self.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
        best = path / "best_model.pt"
        self.best_state = torch.load(best, map_location="cpu", weights_only=True) if best.exists() else None
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
        state = json.loads(state_file.read_text())
        self.step, self.epoch, self.batch_index = state["step"], state["epoch"], state["batch_index"]
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.history = state["history"]
        logger.info("resumed from %s: step %d, epoch %d, batch %d", path, self.step, self.epoch, self.batch_index)

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, resume_from: str | Path | None = None) -> FitResult:
        """Train until epochs / max_steps / early stopping; restore the best weights; store reward stats in metadata."""
        tc = self.cfg.train
        if resume_from is None and tc.resume:
            resume_from = latest_checkpoint(tc.output_dir)
            if resume_from is None:
                logger.info("train.resume=true but no checkpoint under %s/checkpoints: starting fresh", tc.output_dir)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        bar = self._progress_bar()
        totals = {"time": 0.0, "cpu": 0.0, "items": 0.0, "tokens": 0.0, "padded": 0.0, "truncated": 0.0}
        window: list[dict[str, float]] = []
        stopped_early = False
        accum = tc.grad_accum_steps
        try:
            while self.step < self.total_steps and self.epoch < _epoch_limit(tc, self.steps_per_epoch):
                batches = self._epoch_batches(self.epoch)
                while self.batch_index < len(batches) and self.step < self.total_steps:
                    group = batches[self.batch_index:self.batch_index + accum]
                    self._maybe_fail()
                    t0, c0 = time.perf_counter(), time.process_time()
                    micro = [self.collate(idx) for idx in group]
                    metrics = self.train_step(micro)
                    dt = time.perf_counter() - t0
                    totals["cpu"] += time.process_time() - c0
                    self.batch_index += len(group)
                    self.step += 1
                    totals["time"] += dt
                    totals["items"] += metrics["n_items"]
                    totals["tokens"] += metrics["n_tokens"]
                    totals["padded"] += metrics["n_padded"]
                    totals["truncated"] += metrics["n_truncated"]
                    metrics.update(_rates(metrics, dt))
                    window.append(metrics)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(_postfix(metrics), refresh=False)
                    if self.step % tc.log_every_steps == 0 or self.step == self.total_steps:
                        self._report_steps(window)
                        window = []
                    epoch_done = self.batch_index >= len(batches)
                    if self._eval_due(epoch_done) and self._run_eval():
                        stopped_early = True
                    if epoch_done:
                        self.epoch += 1
                        self.batch_index = 0
                    if self._checkpoint_due(epoch_done):
                        self._checkpoint()
                    if stopped_early:
                        break
                if stopped_early:
                    break
        except StopTraining:
            stopped_early = True
            logger.info("a callback stopped training at step %d", self.step)
        finally:
            if bar is not None:
                bar.close()
        if window:
            self._report_steps(window)
        if not self.history or self.history[-1].get("step") != self.step:
            self._run_eval(final=True)
        final_step = self.step
        if tc.restore_best and self.best_state is not None and self.best_step != self.step:
            fsdp.load_model_state_dict(self.model, self.best_state, device=self.device)
            final_step = self.best_step
            logger.info("restored the best weights (step %d, %s=%.4f)", self.best_step, tc.early_stopping_metric, self.best_metric)
        # The weights left in the model were evaluated at final_step already (fp32, deterministic): reuse that.
        evaluated = [h for h in self.history if h.get("step") == final_step]
        if evaluated:
            final = {k: v for k, v in evaluated[-1].items() if k not in ("step", "epoch")}
        else:
            final = self.evaluate() if self.val_records else {}
        if self.pair_terms.temperature is not None:
            self.model.metadata.temperature = self.pair_terms.temperature.value()
            logger.info("learned temperature T = %.4f (fitted on the held-out calibration pairs)",
                        self.model.metadata.temperature)
        self.store_reward_stats()
        result = FitResult(
            steps=self.step,
            epochs=self.epoch + (self.batch_index / max(1, self.batches_per_epoch)),
            stopped_early=stopped_early, best_metric=self.best_metric, best_step=self.best_step,
            final_metrics=final, history=list(self.history), train_time_s=totals["time"],
            pairs_per_s=totals["items"] * self.world_size / totals["time"] if totals["time"] else 0.0,
            tokens_per_s=totals["tokens"] * self.world_size / totals["time"] if totals["time"] else 0.0,
            padding_fraction=totals["padded"] / max(1.0, totals["padded"] + totals["tokens"]),
            n_truncated=int(totals["truncated"]), last_checkpoint=self.last_checkpoint,
            resumed_from=str(resume_from) if resume_from is not None else None, train_cpu_s=totals["cpu"],
        )
        if self.is_main:
            logger.info(
                "fit: %d steps in %.1fs of training, %.1f %s/s, %.0f tokens/s, padding %.1f%%, %d truncated sequences; %s",
                result.steps, result.train_time_s, result.pairs_per_s, self.kind, result.tokens_per_s,
                100 * result.padding_fraction, result.n_truncated,
                ", ".join(f"{k}={v:.4f}" for k, v in final.items() if not k.endswith(("_low", "_high"))),
            )
        self._emit("on_fit_end", result)
        return result

    def _maybe_fail(self) -> None:
        at = self.cfg.train.fail_at_step
        if at is None or self.step != at or self._fail_marker.exists():
            return
        self._fail_marker.parent.mkdir(parents=True, exist_ok=True)
        self._fail_marker.write_text(f"failed once at step {at}\n")
        raise RuntimeError(
            f"train.fail_at_step={at}: injected failure (testing aid); the marker {self._fail_marker} makes the "
            "restarted run go past this step"
        )

    def _eval_due(self, epoch_done: bool) -> bool:
        if not self.val_records:
            return False
        every = self.cfg.train.eval_every_steps
        if every is not None:
            return self.step % every == 0
        return epoch_done

    def _checkpoint_due(self, epoch_done: bool) -> bool:
        every = self.cfg.train.checkpoint_every_steps
        if every is not None:
            return self.step % every == 0
        return epoch_done

    def _checkpoint(self) -> None:
        # Every rank gets on_checkpoint (Ray Train's report() is a barrier all workers must reach) and enters
        # save_checkpoint (under FSDP gathering the full state is a collective); only rank 0 writes the folder,
        # the others get path=None.
        path = self.save_checkpoint()
        metrics = dict(self.history[-1]) if self.history and self.history[-1].get("step") == self.step else {}
        metrics["step"] = float(self.step)
        self._emit("on_checkpoint", self.step, path, metrics)

    def _run_eval(self, *, final: bool = False) -> bool:
        """Evaluate, update best / patience; True when early stopping says stop."""
        tc = self.cfg.train
        metrics = self.evaluate()
        if not metrics:
            return False
        metrics["step"] = float(self.step)
        metrics["epoch"] = float(self.epoch)
        self.history.append(metrics)
        name = tc.early_stopping_metric
        if name not in metrics:
            raise ConfigError(f"train.early_stopping_metric={name!r} is not a validation metric; known: {', '.join(sorted(metrics))}")
        value = metrics[name]
        better = self.best_metric is None or (value > self.best_metric if tc.early_stopping_mode == "max" else value < self.best_metric)
        if better and not math.isnan(value):
            self.best_metric, self.best_step = value, self.step
            self.evals_without_improvement = 0
            if tc.restore_best:
                self.best_state = fsdp.cpu_model_state_dict(self.model)  # FSDP: gathered on rank 0 (all ranks call)
        else:
            self.evals_without_improvement += 1
        if self.is_main:
            logger.info("eval at step %d: %s", self.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("val_") and not k.endswith(("_low", "_high"))))
        self._emit("on_eval", self.step, metrics)
        if not final and tc.patience is not None and self.evals_without_improvement >= tc.patience:
            logger.info("early stopping at step %d: %s has not improved for %d evaluations (best %.4f at step %s)", self.step, name, tc.patience, self.best_metric, self.best_step)
            return True
        return False

    def _report_steps(self, window: list[dict[str, float]]) -> None:
        keys = window[0].keys()
        mean = {k: float(np.nanmean([m[k] for m in window])) if not all(math.isnan(m[k]) for m in window) else float("nan") for k in keys}
        mean["n_truncated"] = float(sum(m["n_truncated"] for m in window))
        mean["lr"] = window[-1]["lr"]
        if self.is_main:
            logger.info(
                "step %d/%d: loss %.4f acc %.3f grad_norm %.3f lr %.2e | %.1f pairs/s %.0f tokens/s padding %.1f%%",
                self.step, self.total_steps, mean["loss"], mean["accuracy"], mean["grad_norm"], mean["lr"],
                mean["pairs_per_s"], mean["tokens_per_s"], 100 * mean["padding_fraction"],
            )
        self._emit("on_step", self.step, mean)

    def _emit(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _progress_bar(self) -> Any:
        if not (self.is_main and self.cfg.train.progress and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    # ------------------------------------------------------------------------------- after training
    @torch.no_grad()
    def store_reward_stats(self, max_sequences: int = 1024) -> None:
        """Reward mean/std over (a capped, seeded sample of) training rewards, plus reference histograms, into metadata.

        Runs at the training precision: mean and std do not need more than bf16 gives, and this runs on up to
        ``max_sequences`` texts at the end of every fit.
        """
        meta = getattr(self.model, "metadata", None)
        if meta is None:
            return
        records = self.train_records
        if len(records) * 2 > max_sequences:
            gen = random.Random(self.cfg.train.seed)
            records = gen.sample(records, max(1, max_sequences // max(1, len(_record_texts(records[0])))))
        parts = self.predict_records(records, fp32=False)
        rewards = torch.cat([p["rewards"] if "rewards" in p else torch.cat([p["chosen"], p["rejected"]]) for p in parts]).cpu().double()
        meta.reward_mean = float(rewards.mean())
        meta.reward_std = float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 1.0
        if meta.reward_std <= 0:
            meta.reward_std = 1.0
        lengths = self._lengths(records)
        meta.reference = _reference(rewards.numpy(), np.asarray(lengths, dtype=np.float64))
        logger.info("reward normalisation over %d training rewards: mean %.4f std %.4f", rewards.numel(), meta.reward_mean, meta.reward_std)


# ---------------------------------------------------------------------------------------- helpers
def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _n_items(batch: dict[str, Any], kind: str) -> int:
    if kind == "pairs":
        return int(batch["n_pairs"])
    if kind == "groups":
        return int(batch["group_rewards_index"].shape[0])
    return int(batch["ratings"].shape[0])


def _epoch_limit(tc: Any, steps_per_epoch: int) -> int:
    if tc.max_steps is not None:
        return math.ceil(tc.max_steps / max(1, steps_per_epoch)) + 1
    return tc.epochs


def _rates(metrics: dict[str, float], dt: float) -> dict[str, float]:
    positions = metrics["n_tokens"] + metrics["n_padded"]
    return {
        "pairs_per_s": metrics["n_items"] / dt if dt > 0 else float("nan"),
        "tokens_per_s": metrics["n_tokens"] / dt if dt > 0 else float("nan"),
        "padding_fraction": metrics["n_padded"] / positions if positions else 0.0,
    }


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    return {
        "pairs/s": f"{metrics['pairs_per_s']:.1f}", "tok/s": f"{metrics['tokens_per_s']:.0f}",
        "loss": f"{metrics['loss']:.3f}", "acc": f"{metrics['accuracy']:.2f}",
    }


def _group_pairs(grouped: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All within-group pairs with different ranks: (better rewards, worse rewards); rank 0 is best."""
    better = (ranks[:, :, None] < ranks[:, None, :]) & mask[:, :, None] & mask[:, None, :]  # (G, K, K)
    g, i, j = better.nonzero(as_tuple=True)
    return grouped[g, i], grouped[g, j]


def _sorted_order(lengths: list[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def _ratings_pair_accuracy(records: list[RatedResponse], rewards: torch.Tensor, aspects: list[str], weights: list[float]) -> float:
    """Share of same-prompt response pairs whose combined rating order the combined reward reproduces."""
    by_prompt: dict[str, list[tuple[float, float]]] = {}
    for rec, r in zip(records, rewards.tolist(), strict=True):
        rated = [(w, rec.ratings[a]) for a, w in zip(aspects, weights, strict=True) if a in rec.ratings]
        if not rated:
            continue
        score = sum(w * v for w, v in rated) / sum(w for w, _ in rated)
        by_prompt.setdefault(rec.prompt, []).append((score, r))
    right = total = 0
    for items in by_prompt.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                if items[i][0] == items[j][0]:
                    continue
                total += 1
                right += (items[i][0] > items[j][0]) == (items[i][1] > items[j][1])
    return right / total if total else float("nan")


def _reference(rewards: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    """Reward and input-length reference distributions (quantile histograms) for drift checks."""
    from raw_rm.uncertainty import ReferenceDistribution

    return {
        "reward": ReferenceDistribution.from_sample(rewards).to_dict(),
        "length": ReferenceDistribution.from_sample(lengths).to_dict(),
    }


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
