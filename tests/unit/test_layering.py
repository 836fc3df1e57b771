"""Core modules never import ray, mlflow, fastapi or starlette (STYLE.md, dependency direction)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import raw_rm

EDGE_PREFIXES = ("raw_rm.cli", "raw_rm.registry", "raw_rm.tune", "raw_rm.serve.app", "raw_rm.train.ray_train")
FORBIDDEN = ("ray", "mlflow", "fastapi", "starlette")


def _core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(raw_rm.__path__, prefix="raw_rm.")]
    return sorted(n for n in names if not n.startswith(EDGE_PREFIXES))


@pytest.mark.parametrize("module", _core_modules())
def test_core_module_imports_no_edge_framework(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"
