"""docs/config.md is generated from the config dataclasses and must not go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_is_current() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "docs" / "generate_config_reference.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_every_config_field_is_documented() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    undocumented = [line for line in text.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert undocumented == [], "fields without a comment in raw_rm/config.py:\n" + "\n".join(undocumented)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    import re

    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    two_commands = [b.strip() for b in blocks[:2]]
    assert two_commands[0].startswith("pip install -e . && raw-rm quickstart"), two_commands
    ci_lines = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == two_commands[1]
