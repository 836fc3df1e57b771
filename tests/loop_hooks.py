"""Test-only loop callbacks: a failure injected once, and a per-rank trace of what each step trained on.

Both are plain picklable objects: ``train_ray(cfg, worker_callbacks=[...])`` sends them to every Ray Train worker
(register this module with ``ray.cloudpickle.register_pickle_by_value`` first: workers cannot import tests/), and
``run_recipe`` calls ``attach(trainer)`` before ``fit``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


class FailOnceAtStep:
    """Raise ``RuntimeError`` once, when the loop reports step ``step`` (or the first report past it).

    ``marker`` is written before raising; while it exists nothing is raised, so a restarted or resumed run goes
    past the step. ``on_step`` runs once per logging window: use ``train.log_every_steps=1`` for an exact step.
    """

    def __init__(self, step: int, marker: str | Path) -> None:
        self.step = step
        self.marker = Path(marker)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if step < self.step or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"failed once at step {step}\n")
        raise RuntimeError(f"FailOnceAtStep({self.step}): injected failure at step {step}")


class StepTracer:
    """Append one JSON line per training step to ``<trace_dir>/rank<r>.jsonl``: a per-process ``attempt`` id, the
    step, epoch, the example indices it trained on, its loss, gradient norm and item count.

    ``attach`` wraps the trainer's ``collate`` and ``train_step``: training indices are collected as batches are
    collated, and written with the step's metrics.
    """

    def __init__(self, trace_dir: str | Path) -> None:
        self.trace_dir = Path(trace_dir).resolve()

    def attach(self, trainer: Any) -> None:
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        path = self.trace_dir / f"rank{trainer.rank}.jsonl"
        attempt = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        collate, train_step = trainer.collate, trainer.train_step
        pending: list[int] = []

        def traced_collate(indices: Any, records: Any = None) -> Any:
            if records is None:  # training batches only, not validation
                pending.extend(int(i) for i in indices)
            return collate(indices, records)

        def traced_train_step(batch: Any) -> dict[str, float]:
            metrics = train_step(batch)
            entry = {
                "attempt": attempt,
                "step": trainer.step + 1,
                "epoch": trainer.epoch,
                "indices": list(pending),
                "loss": metrics["loss"],
                "grad_norm": metrics["grad_norm"],
                "n_items": metrics["n_items"],
            }
            pending.clear()
            with path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
            return metrics

        trainer.collate, trainer.train_step = traced_collate, traced_train_step
