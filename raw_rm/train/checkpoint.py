"""Resumable checkpoint folders of the training loop: write, read, find the latest.

A checkpoint folder (default ``<output_dir>/checkpoints/step_<N>``) holds: ``model.pt`` (unwrapped state dict;
gathered in full when FSDP shards the model, see ``raw_rm/train/fsdp.py``), ``optimizer.pt`` (keyed by parameter
name under FSDP), ``scheduler.pt``, ``scaler.pt`` (fp16 only), ``best_model.pt`` (the best weights so far, when
restore-best needs them), ``rng.pt`` (torch, numpy, python, cuda), ``trainer_state.json`` (step, epoch, batch index
within the epoch, best metric, patience counter, eval history) and ``config.json`` (``asdict(cfg)``). Resuming from
it mid-epoch continues with the very next micro-batch, so the final weights equal those of an uninterrupted run.

    path = save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, scaler=None, best_state=None,
                           trainer_state=state, config=asdict(cfg), is_main=rank == 0)
    state, best_state = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, scaler=None, device=dev)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raw_rm.runtime import rng_state, set_rng_state
from raw_rm.train import fsdp

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """``<output_dir>/checkpoints/step_<step>``: where the loop writes the checkpoint of optimiser step ``step``."""
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step under ``<output_dir>/checkpoints``, or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    best_state: dict[str, torch.Tensor] | None,
    trainer_state: dict[str, Any],
    config: dict[str, Any],
    is_main: bool,
) -> str | None:
    """Write the folder at ``path`` and return it; None on ranks that do not write (``is_main`` False).

    FSDP-sharded model: every rank must call it (the full state is gathered, a collective); rank 0 writes.
    """
    model_state = fsdp.model_state_dict(model)
    optimizer_state = fsdp.optimizer_state_dict(model, optimizer)
    if not is_main:
        return None
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, tmp / "model.pt")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    if best_state is not None:
        torch.save(best_state, tmp / "best_model.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)  # a crash mid-write leaves only a .tmp folder, never a half checkpoint
    return str(path)


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model, optimiser, scheduler, scaler and every RNG from the folder at ``path``.

    Returns:
        (the loop state of ``trainer_state.json``, the best weights so far on the CPU or None).

    Raises:
        FileNotFoundError: ``path`` is not a checkpoint folder.
        ValueError: it was written under FSDP and this model is not sharded, or the other way round.
    """
    path = Path(path)
    state_file = path / "trainer_state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path}: not a raw_rm checkpoint (no trainer_state.json)")
    state = json.loads(state_file.read_text())
    saved_fsdp, is_fsdp = bool(state.get("fsdp", False)), fsdp.is_sharded(model)
    if saved_fsdp != is_fsdp:
        names = {True: "ray.strategy=fsdp", False: "ray.strategy=ddp (or a local run)"}
        raise ValueError(
            f"{path}: checkpoint written under {names[saved_fsdp]} cannot resume under {names[is_fsdp]} (the "
            f"optimizer state is laid out differently); resume with {names[saved_fsdp]}, or start from its weights "
            f"with model.init_from after saving the model"
        )
    fsdp.load_model_file(model, path / "model.pt", device=device)
    fsdp.load_optimizer_file(model, optimizer, path / "optimizer.pt", device=device)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
    best = path / "best_model.pt"
    best_state = torch.load(best, map_location="cpu", weights_only=True) if best.exists() else None
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return state, best_state
