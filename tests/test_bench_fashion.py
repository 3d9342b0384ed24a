"""benchmarks/fashion_mnist.py: a recipe variant scored on a held-out preparation is labelled as held
out (never as test accuracy), a variant must name its results file, and a results file that exists is
refused before any training instead of overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alexnet.data.prepare import prepare

from fakes_data import write_idx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fashion_mnist.py"


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_held_out_variant_is_labelled_held_out_and_its_results_file_never_overwritten(tmp_path: Path) -> None:
    write_idx(tmp_path / "fashion", n_train=40, n_test=10)  # a folder named so gets Fashion-MNIST's class names
    data = tmp_path / "heldout"
    prepare(tmp_path / "fashion", data, workers=1, progress=False, val_fraction=0.25)
    out = tmp_path / "results"

    untagged = bench(data, "--work", tmp_path / "w0", "--out", out, "--set", "epochs=1")
    assert untagged.returncode == 2 and "need --tag" in untagged.stderr and not (tmp_path / "w0").exists()

    run = bench(data, "--work", tmp_path / "w1", "--out", out, "--tag", "short", "--set", "epochs=1",
                "--set", "batch_size=10", "--model-opt", "dropout=0")
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = out.glob("*.json")
    assert path.name.startswith("fashion-mnist-heldout-short-")
    doc = json.loads(path.read_text())
    assert doc["scored_on"] == "held-out part of the training set"
    assert doc["overrides"] == ["--set epochs=1", "--set batch_size=10", "--model-opt dropout=0"]
    assert "--set epochs=1 --set batch_size=10 --model-opt dropout=0" in doc["command"]
    (row,) = doc["rows"]
    assert row["epochs"] == 1 and 0 <= row["heldout_accuracy_center"] <= 1
    assert not [k for k in row if k.startswith("test_")]  # never called test accuracy
    assert "--model-opt dropout=0" in row["console"]

    before = path.read_bytes()
    again = bench(data, "--work", tmp_path / "w2", "--out", out, "--tag", "short", "--set", "epochs=1")
    assert again.returncode == 2 and "exists" in again.stderr and str(path) in again.stderr
    assert path.read_bytes() == before and not (tmp_path / "w2").exists()
