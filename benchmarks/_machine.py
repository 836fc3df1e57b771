"""The machine facts that every benchmark prints beside its numbers (they mean something only with them)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_facts(**extra: object) -> dict[str, str]:
    """CPU model, cores, native bf16, memory, torch, GPU, Python, OS and the load average now, plus ``extra``."""
    facts = {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count())}
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        facts["cpu"] = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from raw_rm.runtime import cpu_supports_bf16  # the check training uses to pick bf16

    facts["native bf16"] = str(cpu_supports_bf16())
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        facts["memory"] = f"{pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch threads"] = str(torch.get_num_threads())
        facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        facts["torch"] = "not installed"
    facts["python"] = platform.python_version()
    facts["os"] = platform.platform()
    facts["load average"] = load_average()
    facts.update({key.replace("_", " "): str(value) for key, value in extra.items()})
    return facts


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, e.g. ``"0.3 1.2 1.8"``."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
