"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and each fails when broken: the
layer contract on a backward import (a lower layer importing a higher one), the benchmarks' on a
script in benchmarks/ importing a command (benchmarks call library functions, never a command)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install 'alexnet[test]')")


def _copy(root: Path) -> None:
    """The sources, the benchmarks and the contracts, into ``root``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "results")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    shutil.copytree(REPO / "benchmarks", root / "benchmarks", ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_are_kept() -> None:
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, backward", [("engine/train.py", "alexnet.report.markdown"),
                                              ("report/run.py", "alexnet.commands.evaluate")])
def test_a_backward_import_breaks_the_contract(tmp_path: Path, module: str, backward: str) -> None:
    _copy(tmp_path)
    path = tmp_path / "src" / "alexnet" / module
    path.write_text(path.read_text() + f"\nimport {backward}  # noqa: E402\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and backward in proc.stdout


@pytest.mark.parametrize("script, line", [("lrn.py", "from alexnet.commands import bench"),
                                          ("data_loader.py", "import alexnet.commands.bench"),
                                          ("cpu_step.py", "from alexnet.cli import main")])
def test_a_benchmark_importing_a_command_breaks_the_contract(tmp_path: Path, script: str, line: str) -> None:
    _copy(tmp_path)
    path = tmp_path / "benchmarks" / script
    assert "alexnet.commands" not in path.read_text() and "alexnet.cli" not in path.read_text()
    path.write_text(path.read_text() + f"\n\ndef _uses_a_command() -> None:\n    {line}  # noqa: F401\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and f"benchmarks.{script[:-3]}" in proc.stdout
