"""``alexnet train`` from the command line: a short run learns; bad input is one line and exit 2;
divergence and stalls are reported; TensorBoard; the fast recipe; the speed switches on the CPU."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from alexnet import models
from alexnet.cli import main
from alexnet.config import TrainConfig, resolve_auto
from alexnet.data.sources import synthetic
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import train as engine
from alexnet.engine.device import is_cuda
from alexnet.engine.optim import Schedule, base_lr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build(tmp_path_factory.mktemp("train") / "ds", size=36, train_per_class=20, val_per_class=5)


def args(data: Path, out: Path, *extra: str, model: str = "alexnet-cifar") -> list[str]:
    return ["train", "--data", str(data), "--model", model, "--out", str(out), "--batch-size", "16", "--workers", "0",
            "--no-progress", *extra]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line_error(err: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_short_run_learns(tmp_path: Path, capsys) -> None:
    ds = synthetic.build(tmp_path / "ds", size=36, train_per_class=50, val_per_class=10)
    out = tmp_path / "run"
    assert main(args(ds, out, "--epochs", "4")) == 0
    r = rows(out)
    assert [x["epoch"] for x in r] == [1, 2, 3, 4]
    for key in ("epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "img_per_s", "time_s",
                "epoch_time_s"):
        assert all(key in x for x in r), key
    assert r[-1]["train_loss"] < r[0]["train_loss"] - 0.05
    assert r[-1]["train_top1_err"] < r[0]["train_top1_err"]
    assert r[-1]["val_top1_err"] < 0.9  # chance: 9 of 10 classes wrong
    assert r[-1]["val_images"] == 100 and r[-1]["train_images"] == 31 * 16
    assert all(b["time_s"] > a["time_s"] for a, b in zip(r, r[1:]))  # cumulative
    for name in ("config.yaml", "model.safetensors", "summary.json", "environment.json"):
        assert (out / name).is_file(), name
    assert "done: 4 epochs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--model", "vgg16"], "unknown model 'vgg16'"),
        (["--recipe", "nosuch"], "unknown recipe 'nosuch'"),
        (["--data", "/no/such/dataset"], "/no/such/dataset: no such dataset"),
        (["--model", "lenet5", "--model-opt", "lrn=none"], "option 'lrn' does not apply to model 'lenet5'"),
        (["--model-parallel", "2"], "model_parallel=2 does not apply to model 'alexnet-cifar'"),
        (["--model", "alexnet"], "images are 36×36, smaller than the 224×224 input of alexnet"),
        (["--set", "no_such_field=1"], "unknown field 'no_such_field'"),
        (["--set", "amp=fp8"], "amp='fp8' is not valid"),
        (["--set", "decode=gpu"], "decode='gpu' is not valid; accepted: cpu, cuda, auto"),
        (["--batch-size", "1000"], "make no full batch of 1000"),
        (["--set", "ddp_comm_hook=int8"], "ddp_comm_hook='int8' is not valid; accepted: none, bf16, fp16"),
        (["--set", "model_options=5", "--model-opt", "lrn=none"], "--set model_options=5: model_options is a mapping"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(data: Path, tmp_path: Path, capsys, extra: list[str], expect: str) -> None:
    argv = args(data, tmp_path / "run", "--epochs", "1")
    if "--data" in extra:  # replace, not append
        i = argv.index("--data")
        argv[i + 1] = extra[1]
        extra = []
    rc = main(argv + extra)
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert expect in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_decode_cuda_without_a_gpu_is_refused_in_one_line(data: Path, tmp_path: Path, capsys) -> None:
    rc = main(args(data, tmp_path / "run", "--epochs", "1", "--set", "decode=cuda"))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "decode=cuda: no CUDA device to decode on (this machine has no CUDA GPU); use decode=cpu or auto" in line
    # The fast recipe decodes on the GPU where there is one, and on the CPU here.
    from alexnet.config import load_recipe

    assert load_recipe("fast")["decode"] == "auto" and TrainConfig().decode == "cpu"


def test_an_existing_run_is_not_overwritten_without_resume(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(args(data, out, "--epochs", "1", "--set", "max_steps_per_epoch=2")) == 0
    capsys.readouterr()
    assert main(args(data, out, "--epochs", "1")) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err)


def test_absurd_learning_rate_stops_with_step_loss_and_intact_checkpoint(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(args(data, out, "--epochs", "1")) == 0  # a good epoch: checkpoint 12
    good = ckpt.latest_checkpoint(out)
    assert good is not None
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    capsys.readouterr()
    # continue it with an absurd learning rate; --keep 0: however many steps it takes to diverge (the
    # weights' overflow point depends on the order of LRN's products), no rotation removes the first
    rc = main(["train", "--out", str(out), "--resume", "--epochs", "3", "--lr", "1e6", "--save-every", "4", "--keep", "0"])
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "diverged" in line and "at step" in line
    assert "the loss is nan" in line or "the loss is inf" in line or "the weights became non-finite" in line
    assert f"last good checkpoint: {ckpt.latest_checkpoint(out)}" in line
    # the good checkpoint is intact, loads, and holds finite weights; no bad checkpoint was written
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest
    for p in ckpt.list_checkpoints(out):
        sd = ckpt.load_checkpoint(p)["model"]
        assert all(torch.isfinite(t).all() for t in sd.values()), p


def test_absurd_learning_rate_on_a_fresh_run_names_the_loss(data: Path, tmp_path: Path, capsys) -> None:
    rc = main(args(data, tmp_path / "run", "--epochs", "2", "--lr", "1e6"))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert "the loss is" in line and "at step" in line and "no checkpoint was written yet" in line
    value = line.split("the loss is ")[1].split()[0]
    assert not math.isfinite(float(value))


def test_stall_warning_is_configurable(data: Path, tmp_path: Path, capsys) -> None:
    # lenet5 starts at the chance-level loss (ln 10); a tiny learning rate keeps it there.
    base = args(data, tmp_path / "a", "--epochs", "1", "--lr", "1e-7", model="lenet5")
    assert main(base + ["--set", "stall_steps=5"]) == 0
    out = capsys.readouterr().out
    assert "warning: the loss has stayed at chance level" in out and "for 5 steps" in out
    assert main(args(data, tmp_path / "b", "--epochs", "1", "--lr", "1e-7", model="lenet5")) == 0  # default: off
    assert "warning: the loss" not in capsys.readouterr().out


def test_tensorboard_event_files(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(args(data, out, "--epochs", "2", "--tensorboard", "--set", "max_steps_per_epoch=2")) == 0
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train_loss", "val_top1_err", "lr"):
        assert tag in tags
    assert [e.step for e in acc.Scalars("val_top1_err")] == [1, 2]
    assert (out / "metrics.jsonl").is_file()


def test_fast_recipe_resolves_auto_by_device_and_scales_the_learning_rate(data: Path, tmp_path: Path) -> None:
    from alexnet.commands.train import add_arguments, config_from_args
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--recipe", "fast", "--out", str(tmp_path / "x"), "--device", "cpu"]))
    assert (cfg.amp, cfg.channels_last, cfg.compile) == ("none", False, False)  # auto on the CPU
    assert resolve_auto({"amp": "auto", "channels_last": "auto", "compile": "auto", "device": "cpu"}, is_cuda) == {
        "amp": "none", "channels_last": False, "compile": False, "device": "cpu"}
    assert (cfg.optimizer, cfg.schedule, cfg.label_smoothing) == ("nesterov", "cosine", 0.1)
    assert base_lr(cfg) == pytest.approx(cfg.lr * cfg.batch_size / cfg.lr_scaling_batch)
    # a tiny run with the recipe: warm-up from the first step, the scaled rate recorded
    out = tmp_path / "run"
    assert main(args(data, out, "--recipe", "fast", "--epochs", "2", "--batch-size", "32",
                     "--set", "max_steps_per_epoch=3", "--set", "warmup_epochs=1")) == 0
    saved = TrainConfig.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert (saved.amp, saved.channels_last, saved.compile) == ("none", False, False)
    r = rows(out)
    sched = Schedule(saved, 3)
    assert r[0]["lr"] == pytest.approx(0.02 * 32 / 256 / 3)  # warm-up: step 1 of 3
    assert r[1]["lr"] == pytest.approx(sched.lr_at(3)) and r[1]["lr"] == pytest.approx(0.02 * 32 / 256)


def test_one_resolver_for_recipes_saved_configs_and_experiments(tmp_path: Path) -> None:
    """config.resolve: recipe (or a saved config) -> overrides -> "auto" -> one validation; the
    command only maps its flags to overrides. model_options merge option by option everywhere."""
    from alexnet import config as config_mod
    from alexnet.commands.train import add_arguments, config_from_args
    from alexnet.errors import UserError
    import argparse

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model: alexnet-cifar\nmodel_options: {dropout: 0.3}\namp: auto\nepochs: 7\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--recipe", str(recipe), "--out", str(tmp_path / "x"), "--device", "cpu",
                                         "--model-opt", "lrn=none", "--epochs", "3"]))
    assert (cfg.recipe, cfg.epochs, cfg.amp, cfg.model_options) == ("mine", 3, "none", {"dropout": 0.3, "lrn": "none"})
    # the same resolver from a run's saved config (--resume) and from an experiment's base
    again = config_mod.resolve(base=cfg.to_dict(), overrides={"model_options": {"dropout": 0.5}}, cuda=is_cuda)
    assert again.model_options == {"dropout": 0.5, "lrn": "none"} and again.epochs == 3
    with pytest.raises(UserError) as e:
        config_mod.resolve(str(recipe), {"nope": 1}, cuda=is_cuda)
    assert str(e.value) == f"recipe {recipe}: unknown field 'nope'"
    with pytest.raises(UserError, match=r"^lr=None is not valid"):  # an explicit null is refused, not ignored
        config_mod.resolve(str(recipe), {"lr": None}, cuda=is_cuda)
    with pytest.raises(UserError, match=r"^amp='auto' is not valid"):  # "auto" needs the device's answer
        config_mod.resolve(str(recipe))


# -- speed switches on the CPU -------------------------------------------------------------------


def _step_ctx(tmp_path: Path, data: Path, **over: object) -> engine.Context:
    cfg = TrainConfig.from_dict({**resolve_auto({}, is_cuda), "model": "alexnet-cifar", "data": str(data), "batch_size": 16,
                                 "workers": 0, "progress": False, "device": "cpu", **over})
    return engine.setup(cfg, tmp_path)


def _one_step(ctx: engine.Context) -> float:
    b = next(iter(ctx.train_loader.iterate()))
    loss, _ = ctx.step_fn(b.images, b.labels, b.indices, 0)
    return float(loss)


def test_channels_last_and_bf16_are_wired_and_sane(data: Path, tmp_path: Path) -> None:
    ref = _one_step(_step_ctx(tmp_path, data))
    ctx = _step_ctx(tmp_path, data, amp="bf16", channels_last=True)
    convs = [m for m in ctx.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert ctx.prec.autocast() is not None and ctx.prec.amp == "bf16"
    seen: list[tuple[torch.dtype, bool]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.is_contiguous(memory_format=torch.channels_last))))
             for m in convs]
    loss = _one_step(ctx)
    for h in hooks:
        h.remove()
    assert seen and all(dt == torch.bfloat16 for dt, _ in seen)  # autocast ran the convolutions in bf16
    assert seen[0][1]  # and on channels_last input
    assert math.isfinite(loss) and abs(loss - ref) < 0.05 * ref  # same weights, same batch: bf16 ≈ fp32


@pytest.mark.slow
def test_compile_runs_a_training_step(data: Path, tmp_path: Path) -> None:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler; none on PATH")
    ref = _one_step(_step_ctx(tmp_path, data, model="lenet5"))
    ctx = _step_ctx(tmp_path, data, model="lenet5", compile=True)
    assert ctx.step_fn.compiled and hasattr(ctx.eval_model, "_orig_mod")  # the step and evaluation are compiled
    loss = _one_step(ctx)
    assert abs(loss - ref) < 1e-4 * ref
    assert isinstance(ckpt.unwrap(ctx.eval_model), models.LeNet5)


def test_a_gradient_compression_hook_in_a_single_process_is_reported_as_having_no_effect(data: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = TrainConfig.from_dict({**resolve_auto({}, is_cuda), "model": "alexnet-cifar", "data": str(data), "batch_size": 16,
                                 "workers": 0, "progress": False, "device": "cpu", "ddp_comm_hook": "bf16"})
    ctx = engine.setup(cfg, tmp_path, log=lines.append)
    assert not isinstance(ctx.model, torch.nn.parallel.DistributedDataParallel)
    assert [x for x in lines if "ddp_comm_hook" in x] == ["warning: ddp_comm_hook=bf16 has no effect in a single process (it compresses the gradient all-reduce "
                     "between torchrun processes)"]
