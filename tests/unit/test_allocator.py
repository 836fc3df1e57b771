"""glibc mmap threshold pinning (raw_rm/runtime.py): freed blocks go back to the OS, user settings win."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from raw_rm import runtime
from raw_rm.config import TrainConfig

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Free a 16 MiB mmapped block (glibc then raises its threshold to 16 MiB), touch 96 blocks of 1 MiB, free all but
# the last (it keeps the heap top from being trimmed) and report how many MiB stayed resident.
_PROBE = """
import ctypes, json, sys
from raw_rm.runtime import pin_mmap_threshold
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)
before = rss_mib()
blocks = [libc.malloc(1 << 20) for _ in range(96)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in blocks[:-1]:
    libc.free(b)
print(json.dumps({"pinned": pinned, "retained_mib": rss_mib() - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pinned_threshold_returns_freed_blocks_to_the_os() -> None:
    free = _probe("default")
    pinned = _probe("pin")
    assert free["retained_mib"] > 80, free  # glibc's dynamic threshold: the 95 freed MiB stay in the heap
    assert pinned["pinned"] is True and pinned["retained_mib"] < 10, pinned  # only the one live block stays


def test_a_threshold_from_the_environment_is_left_alone() -> None:
    result = _probe("pin", MALLOC_MMAP_THRESHOLD_="33554432")
    assert result["pinned"] is False, result


def test_trainer_pins_the_threshold_unless_configured_off(tmp_path, monkeypatch) -> None:
    from raw_rm.config import Config, DataConfig, ModelConfig
    from raw_rm.data.records import PreferencePair
    from raw_rm.models import build_model
    from raw_rm.train.loop import RewardModelTrainer

    calls = []
    monkeypatch.setattr(runtime, "pin_mmap_threshold", lambda: calls.append(1) or True)
    records = [PreferencePair(prompt=f"q {i}", chosen="good answer", rejected="bad") for i in range(4)]
    model, tok = build_model(ModelConfig(arch="concat", backbone="tiny-bert"))
    for pin in (True, False):
        train = TrainConfig(
            batch_size=2, precision="fp32", progress=False, output_dir=str(tmp_path), pin_malloc_threshold=pin
        )
        RewardModelTrainer(
            Config(data=DataConfig(max_len_tokens=32), model=ModelConfig(backbone="tiny-bert"), train=train),
            model,
            tok,
            records,
            [],
        )
    assert calls == [1]  # pinned with the default (true), left alone with false
    assert TrainConfig().pin_malloc_threshold is True
