"""How many torch threads a process should run: from the CPUs it may really use, not from Ray's OMP clamp (core).

Ray sets ``OMP_NUM_THREADS`` to an actor's ``num_cpus`` (1 for anything up to 1) before the actor starts, so torch
runs ONE intra-op thread in a Serve replica or Train worker that reserves one CPU, however many cores are idle
(MiniLM on a 2-core CPU: 17.4 requests/s served with 1 thread, 25.8 with 2). The CPUs a process may use are
its CPU affinity (``os.sched_getaffinity``: taskset, cpusets, Kubernetes static CPU manager) cut down to the
container's CPU quota (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``):

    plan = plan_threads(reserved=1.0, sharing=1)     # one member replica on this machine, 1 CPU reserved
    torch.set_num_threads(plan.threads)             # 2 on a 2-core machine
    log.info("torch threads: %s", plan.reason)

``sharing`` is how many torch-heavy processes (member replicas, Train workers) split those CPUs; each gets an
equal share, never less than what it reserved from Ray, never more than the usable CPUs. Callers pass the
reserved CPUs in (this module does not import Ray).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class UsableCpus:
    """CPUs this process may run on: ``count`` = min(affinity, quota rounded up), and where each figure came from."""

    count: int
    affinity: int
    quota: float | None  # CPUs allowed by the cgroup quota; None = no quota

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup quota {self.quota:g} CPUs"
        return f"{self.count} usable CPUs (affinity {self.affinity}, {quota})"


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    reason: str  # one line for start-up logs: the figures the choice came from


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs this process's cgroup may use per period (quota / period), or None when there is no quota.

    Reads cgroup v2 ``<root>/<group>/cpu.max`` ("max 100000" = none), else v1
    ``<root>/cpu/<group>/cpu.cfs_quota_us`` (-1 = none) over ``cpu.cfs_period_us``. Missing files mean no quota.
    """
    groups: dict[str, str] = {}
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                groups[name] = path.lstrip("/")
    except (OSError, ValueError):
        return None
    if "" in groups:
        v2 = root / groups[""] / "cpu.max"
        if v2.is_file():
            fields = v2.read_text().split()
            if len(fields) == 2 and fields[0] != "max" and int(fields[1]) > 0:
                return int(fields[0]) / int(fields[1])
            if fields and fields[0] == "max":
                return None
    v1_group = groups.get("cpu", groups.get("cpuacct"))
    for base in [root / "cpu" / v1_group, root / "cpu,cpuacct" / v1_group] if v1_group is not None else []:
        quota_file, period_file = base / "cpu.cfs_quota_us", base / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota, period = int(quota_file.read_text()), int(period_file.read_text())
            return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cpus(*, affinity: int | None = None, quota: float | None | str = "read") -> UsableCpus:
    """The CPUs this process may really use; ``affinity`` / ``quota`` replace what is read from the system."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # no sched_getaffinity (macOS): every CPU
            affinity = os.cpu_count() or 1
    limit = cgroup_cpu_quota() if quota == "read" else quota
    assert limit is None or isinstance(limit, (int, float)), f"quota must be a number, None or 'read', got {limit!r}"
    count = affinity if limit is None else min(affinity, max(1, math.ceil(limit - 1e-9)))
    return UsableCpus(max(1, count), affinity, None if limit is None else float(limit))


def plan_threads(reserved: float | None, sharing: int = 1, usable: UsableCpus | None = None) -> ThreadPlan:
    """torch intra-op threads for one of ``sharing`` processes that split the usable CPUs.

    ``reserved``: the CPUs Ray reserved for this process (None when not under Ray). The result is the equal share
    ``usable // sharing``, raised to the reserved CPUs (rounded up), at least 1 and at most the usable CPUs.
    """
    if sharing < 1:
        raise ValueError(f"sharing: expected >= 1 process, got {sharing}")
    usable = usable or usable_cpus()
    share = usable.count // sharing
    floor = math.ceil(reserved - 1e-9) if reserved else 0
    threads = max(1, min(usable.count, max(share, floor)))
    who = "this process" if sharing == 1 else f"{sharing} processes"
    reserved_text = f"; {reserved:g} CPU reserved" if reserved else ""
    return ThreadPlan(
        threads, f"{threads} thread{'s' if threads != 1 else ''}: {usable.describe()} shared by {who}{reserved_text}"
    )
