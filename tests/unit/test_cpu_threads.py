"""raw_rm.cpu_threads: usable CPUs from affinity and cgroup quota; thread plans from them and Ray's reservation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raw_rm.cpu_threads import UsableCpus, cgroup_cpu_quota, plan_threads, usable_cpus


def _cgroup(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_lines)
    return root, proc


def test_cgroup_v2_quota_is_quota_over_period(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/kubepods/pod1\n", {"kubepods/pod1/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 1.5


def test_cgroup_v2_max_means_no_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    lines = "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n"
    root, proc = _cgroup(
        tmp_path, lines, {"cpu/docker/abc/cpu.cfs_quota_us": "300000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}
    )
    assert cgroup_cpu_quota(root, proc) == 3.0
    (root / "cpu/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/\n", {})
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(root, tmp_path / "missing") is None


def test_usable_cpus_is_affinity_cut_to_the_quota_rounded_up() -> None:
    assert usable_cpus(affinity=8, quota=None) == UsableCpus(8, 8, None)
    assert usable_cpus(affinity=8, quota=2.5).count == 3
    assert usable_cpus(affinity=2, quota=4.0).count == 2
    assert usable_cpus(affinity=4, quota=0.5).count == 1  # a fractional quota still runs one thread


def test_usable_cpus_reads_this_process_affinity() -> None:
    assert usable_cpus(quota=None).count == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("reserved", "sharing", "usable", "threads"),
    [
        (1.0, 1, 2, 2),  # a member replica reserving 1 CPU on a 2-core machine: both cores, not Ray's OMP=1
        (1.0, 2, 2, 1),  # two Train workers on 2 cores: one each
        (None, 1, 16, 16),  # not under Ray: every usable CPU
        (4.0, 8, 16, 4),  # a reservation above the equal share wins
        (0.25, 3, 2, 1),  # never below one thread
        (8.0, 1, 2, 2),  # never above the usable CPUs, whatever was reserved
        (1.5, 4, 4, 2),  # a fractional reservation rounds up
    ],
)
def test_plan_threads(reserved: float | None, sharing: int, usable: int, threads: int) -> None:
    plan = plan_threads(reserved, sharing, usable_cpus(affinity=usable, quota=None))
    assert plan.threads == threads


def test_plan_reason_names_the_figures() -> None:
    plan = plan_threads(1.0, 2, usable_cpus(affinity=4, quota=3.0))
    assert (
        plan.reason == "1 thread: 3 usable CPUs (affinity 4, cgroup quota 3 CPUs) shared by 2 processes; 1 CPU reserved"
    )


def test_plan_threads_refuses_zero_sharers() -> None:
    with pytest.raises(ValueError, match=r"^sharing: expected >= 1 process, got 0$"):
        plan_threads(1.0, 0)
