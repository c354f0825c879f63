"""The README opens with the two commands, and CI runs the README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in first_block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_run_and_test_commands():
    run_cmd, test_cmd = _readme_commands()
    assert "igc-upscale" in run_cmd and "pip install torch==2.13.0" in run_cmd
    assert "pytest" in test_cmd and "pip install torch==2.13.0" in test_cmd


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = _readme_commands()[1]
    # CI adds -q to pip for a shorter log; otherwise the command is the same.
    assert test_cmd.replace("pip install ", "pip install -q ") in ci
