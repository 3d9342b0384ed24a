"""`alexnet demo` end to end, shortened to one epoch."""

import json
import subprocess
import sys

import yaml
from PIL import Image

from alexnet import config as config_mod
from alexnet.engine.optim import Schedule


def test_demo_writes_all_artefacts(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "alexnet", "demo", "--out", str(out), "--epochs", "1", "--no-progress",
                        "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3
    for name in ("metrics.jsonl", "curves.png", "filters.png", "predictions.png", "report.md", "model.safetensors",
                 "config.yaml", "eval.json"):
        assert (out / name).is_file(), name
    for png in ("curves.png", "filters.png", "predictions.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in ("epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "img_per_s", "time_s"):
        assert key in rows[0]
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev) == {"center", "ten_crop"}
    report = (out / "report.md").read_text()
    assert "filters.png" in report and "predictions.png" in report and "curves.png" in report
    assert "[3/4]" in r.stdout and str(out / "report.md") in r.stdout
    # a second demo into the same folder replaces the first
    r2 = subprocess.run([sys.executable, "-m", "alexnet", "demo", "--out", str(out), "--epochs", "1", "--no-progress"],
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "alexnet", "demo", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "not a demo run folder" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_the_demo_recipe_anneals_within_its_epochs():
    """The final error is the recipe's, not the last epoch's noise: the last two epochs run at a
    tenth and a hundredth of the starting rate, within the recipe's 16 epochs."""
    cfg = config_mod.resolve("demo", {})
    assert cfg.epochs == 16 and cfg.schedule == "step" and cfg.batch_size == 32 and cfg.channels_last
    steps = 5000 // cfg.batch_size  # the built-in training split, last partial batch dropped
    sched = Schedule(cfg, steps_per_epoch=steps)
    per_epoch = [sched.lr_at(steps * e) for e in range(cfg.epochs)]
    assert per_epoch[:12] == [cfg.lr] * 12
    assert all(abs(lr - cfg.lr / 10) < 1e-12 for lr in per_epoch[12:15])
    assert abs(per_epoch[-2] - cfg.lr / 10) < 1e-12 and abs(per_epoch[-1] - cfg.lr / 100) < 1e-12
