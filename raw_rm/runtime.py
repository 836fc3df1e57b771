"""Process set-up shared by training, inference and serving: precision, seeds and RNG state, threads, malloc.

    precision = resolve_precision("auto", "cpu")   # "bf16" only where the CPU has native bf16, else "fp32"
    prepare_process(cfg.train)                      # torch threads, malloc pin, seeds: once per training process

Precision is decided by the CPU's flags, never by a fixed default: bf16 autocast on a CPU without native bf16
emulates it and ran 3.5x slower than fp32 here, while on CPUs with ``avx512_bf16`` it ran 1.33x faster.

glibc malloc (``pin_mmap_threshold``): torch's CPU tensors come straight from ``malloc``. glibc serves blocks above
``M_MMAP_THRESHOLD`` with ``mmap`` (unmapped, so returned to the OS, when freed) and the rest from its heap. The
threshold starts at 128 KiB but *rises* to the size of every mmapped block that is freed (up to 32 MiB), so after
the first training step nearly every activation tensor comes from the heap. With length grouping every batch has
another width, the heap holes left by one step do not fit the next step's tensors, the heap keeps growing, and peak
RSS grows with the length of the run although the live memory does not (mallopt(3), "M_MMAP_THRESHOLD"; glibc's
malloc/arena.c).

Setting the threshold explicitly turns that dynamic adjustment off (documented in mallopt(3)): blocks of
128 KiB and more (glibc's own starting value) stay mmapped and go back to the OS when freed, so RSS follows the
live memory. Measured here (MiniLM-L6, 16 pairs = 32 rows per step, bf16 autocast, 12 steps of random widths
100..249): peak RSS 2,048 MiB -> 1,572 MiB, RSS between steps 1,938 -> 802 MiB; 8 steps all of width 256 peaked
at 1,747 MiB unpinned, so the growth is fragmentation, not activations. The price is page faults on fresh
mmapped blocks: more system time per step (11.8 s vs 2.7 s over those 12 steps, against ~105 s of user time).

Only applied on Linux with glibc, and never over a choice the user made: ``MALLOC_MMAP_THRESHOLD_`` or a
``glibc.malloc.mmap_threshold`` tunable in the environment, or another allocator preloaded (jemalloc, tcmalloc).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raw_rm.config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
DEFAULT_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value (DEFAULT_MMAP_THRESHOLD_MIN)

_pinned: int | None = None  # the threshold this process set, once set


# ------------------------------------------------------------------------------------------ precision
def cpu_supports_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` flags)."""
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Map ``train.precision`` to what runs: "fp32", "bf16" or "fp16".

    Raises:
        ConfigError: fp16 asked for on a device without CUDA (fp16 needs a GradScaler on a GPU), or an unknown name.
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
        logger.warning(
            "train.precision=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): expect it slower than fp32"
        )
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: expected one of auto, fp32, bf16, fp16, got {precision!r}")
    return precision


# ---------------------------------------------------------------------------------------------- seeds
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state ``seed_everything`` seeds (python, numpy, torch, each CUDA device), for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned (the CUDA part only where CUDA is available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- malloc
def _skip_reason() -> str | None:
    """Why the threshold must not be touched in this process, or None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "not Linux with glibc"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return "the environment sets the mmap threshold (MALLOC_MMAP_THRESHOLD_ / GLIBC_TUNABLES)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"another allocator is preloaded (LD_PRELOAD={preload})"
    return None


def pin_mmap_threshold(threshold_bytes: int = DEFAULT_MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (process-wide) so freed tensors return to the OS instead of fragmenting the heap.

    Idempotent; True when the threshold is (now or already) pinned by this process, False where it is not
    applied (see the module docstring for when it is skipped).
    """
    global _pinned
    if _pinned is not None:
        return True
    reason = _skip_reason()
    if reason is not None:
        logger.debug("malloc mmap threshold left alone: %s", reason)
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the process already uses
        ok = libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)) == 1
    except (OSError, AttributeError) as err:
        logger.debug("malloc mmap threshold left alone: %s", err)
        return False
    if ok:
        _pinned = int(threshold_bytes)
        logger.info(
            "malloc: blocks >= %d KiB are mmapped and returned to the OS when freed (train.pin_malloc_threshold)",
            threshold_bytes // 1024,
        )
    return ok


# ---------------------------------------------------------------------------------------------- process
def prepare_process(tc: TrainConfig) -> None:
    """A training process's set-up from ``cfg.train``: torch threads (``num_threads``), the malloc pin
    (``pin_malloc_threshold``), then every seed (``seed``)."""
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.pin_malloc_threshold:
        pin_mmap_threshold()
    seed_everything(tc.seed)
