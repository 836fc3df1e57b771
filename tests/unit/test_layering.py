"""Core modules never import ray, mlflow, fastapi or starlette (STYLE.md, dependency direction)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import raw_rm

# Edges: everything under raw_rm.tracking (all MLflow code), Tune's driver and scheduler (raw_rm.tune.space and
# raw_rm.tune.results are core), Ray Train, the ensemble trainer, Serve's app and the CLI.
EDGE_PREFIXES = ("raw_rm.cli", "raw_rm.tracking", "raw_rm.tune.driver", "raw_rm.tune.scheduler", "raw_rm.serve.app",
                 "raw_rm.train.ray_train", "raw_rm.train.ensemble")
FORBIDDEN = ("ray", "mlflow", "fastapi", "starlette")

# One fresh interpreter imports the core modules one after another and records which forbidden packages each
# import newly brought in: the first module that pulls one in is the one to blame, and a single process keeps
# this test to one torch/transformers start-up instead of one per module.
_PROBE = """
import importlib, json, sys
forbidden, modules = json.loads(sys.argv[1])
blame = {}
for name in modules:
    before = {m for m in forbidden if m in sys.modules}
    importlib.import_module(name)
    added = [m for m in forbidden if m in sys.modules and m not in before]
    if added:
        blame[name] = added
print(json.dumps(blame))
"""


def _core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(raw_rm.__path__, prefix="raw_rm.")]
    return sorted(n for n in names if not n.startswith(EDGE_PREFIXES))


def test_core_modules_import_no_edge_framework() -> None:
    modules = _core_modules()
    for name in ("raw_rm.losses", "raw_rm.models.concat", "raw_rm.runtime", "raw_rm.train.loop", "raw_rm.train.checkpoint",
                 "raw_rm.train.objectives.pairs", "raw_rm.train.objectives.distill", "raw_rm.compression",
                 "raw_rm.inference", "raw_rm.train.recipe", "raw_rm.eval.gate", "raw_rm.tune", "raw_rm.tune.space",
                 "raw_rm.tune.results"):
        assert name in modules, (name, modules)
    assert not [m for m in modules if m.startswith(("raw_rm.tracking", "raw_rm.tune.driver"))], modules
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([FORBIDDEN, modules])], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
