"""The GPU path, checked on the CPU. The training and evaluation loops never make the host wait for
the GPU inside a step: the device's values are read in batches, at the logging cadence. Without a
GPU, the "meta" device stands in for it: every op of the loop is recorded, and a read of a device
value (``.item()``, ``float()``, ``.cpu()``), a blocking host-to-device copy or an op whose output
shape depends on the device's data is an event of the step it happened in. Reads return made-up
values (ones), so the loop goes on as on a GPU. Also: the loader page-locks what the step copies,
and the fused update is used only where it is compiled."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alexnet.config import TrainConfig
from alexnet.data.loader import BatchLoader
from alexnet.data.sources import synthetic
from alexnet import signals
from alexnet.engine import run_folder
from alexnet.engine import train as engine
from alexnet.engine.evaluate import Precision, evaluate
from alexnet.engine.fast_step import FastStep

aten = torch.ops.aten
DEVICE = torch.device("meta")
# Ops whose output size depends on the values: on a GPU they wait for the device to know it.
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                  aten.unique_consecutive.default, aten.repeat_interleave.Tensor, aten.nonzero_static.default}


class HostSyncs(TorchDispatchMode):
    """Records each op that synchronises the host with the device, by step (``step`` is advanced by
    whoever runs the loop); CPU→device copies are kept apart with their ``non_blocking``."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.syncs: list[tuple[int, str]] = []
        self.copies: list[tuple[int, tuple[int, ...], bool]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = [t for t in ins if t.device.type == DEVICE.type]
        if func is aten._local_scalar_dense.default and on_device:
            self.syncs.append((self.step, "read a value (.item(), float(), bool(), int())"))
            t = on_device[0]
            return True if t.dtype == torch.bool else (1 if not t.is_floating_point() else 1.0)
        if func in DATA_DEPENDENT and on_device:
            self.syncs.append((self.step, f"data-dependent shape ({func})"))
        if func in (aten._to_copy.default, aten.copy_.default) and on_device:
            dst = kwargs.get("device") if func is aten._to_copy.default else args[0].device
            src = args[0] if func is aten._to_copy.default else args[1]
            if dst is not None and torch.device(dst).type == "cpu" and src.device.type == DEVICE.type:
                self.syncs.append((self.step, "device-to-host copy"))
                dtype = kwargs.get("dtype") or src.dtype
                fake = torch.ones(src.shape, dtype=dtype)
                return fake if func is aten._to_copy.default else args[0].fill_(1)
        out = func(*args, **kwargs)
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in ins) and any(t.device.type == DEVICE.type for t in outs):
            non_blocking = bool(kwargs.get("non_blocking", False) or (len(args) > 2 and args[2] is True))
            self.copies.append((self.step, tuple(ins[0].shape), non_blocking))
            if not non_blocking:
                self.syncs.append((self.step, f"blocking host-to-device copy ({func}, {tuple(ins[0].shape)})"))
        return out


class HostValues(TorchFunctionMode):
    """``torch.tensor(x, device=...)`` and its kin build the tensor on the host and copy it, blocking
    (below the dispatcher, so :class:`HostSyncs` does not see it): recorded into ``rec``."""

    def __init__(self, rec: HostSyncs) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == DEVICE.type:
            self.rec.syncs.append((self.rec.step, f"a host value copied to the device ({func.__name__})"))
        return func(*args, **kwargs)


class recording:
    """Both recorders at once."""

    def __init__(self, rec: HostSyncs) -> None:
        self.rec, self.fn = rec, HostValues(rec)

    def __enter__(self) -> HostSyncs:
        self.fn.__enter__()
        self.rec.__enter__()
        return self.rec

    def __exit__(self, *exc: Any) -> None:
        self.rec.__exit__(*exc)
        self.fn.__exit__(*exc)


class CountSteps:
    """The step, advancing the recorder's step count before each call."""

    def __init__(self, step: FastStep, rec: HostSyncs) -> None:
        self.step, self.rec = step, rec

    def __call__(self, *args: Any) -> Any:
        self.rec.step += 1
        return self.step(*args)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build(tmp_path_factory.mktemp("sync") / "ds", size=36, train_per_class=20, val_per_class=5)


def device_ctx(data: Path, out: Path, **over: Any) -> engine.Context:
    """A run set up on the CPU, then moved to the stand-in device (weights, optimizer state, step)."""
    cfg = TrainConfig.from_dict({"model": "alexnet-cifar", "data": str(data), "batch_size": 16, "workers": 0,
                                 "progress": False, "device": "cpu", "epochs": 3, **over})
    ctx = engine.setup(cfg, out)
    ctx.model.to(DEVICE)  # in place: the optimizer keeps its parameters
    step = FastStep(ctx.model, ctx.optimizer, ctx.augment, DEVICE, amp="none", channels_last=False,
                    fused_optimizer=False, label_smoothing=cfg.label_smoothing)
    return dataclasses.replace(ctx, step_fn=step, prec=Precision(DEVICE))


def epoch_under(rec: HostSyncs, ctx: engine.Context, state: engine.RunState) -> dict[str, float]:
    ctx = dataclasses.replace(ctx, step_fn=CountSteps(ctx.step_fn, rec))  # type: ignore[arg-type]
    with recording(rec):
        tr, stopped = engine.train_one_epoch(ctx, state, signals.StopRequest(), engine.Checkpointer(ctx, time.time()))
    assert not stopped
    return tr


@pytest.mark.parametrize("over", [{}, {"optimizer": "sgd", "schedule": "cosine", "warmup_epochs": 1.0},
                                  {"crop_padding": 2, "pca_std": 0.0}], ids=["paper", "sgd-cosine", "padded"])
def test_a_training_step_never_waits_for_the_device(data: Path, tmp_path: Path, over: dict[str, Any]) -> None:
    ctx = device_ctx(data, tmp_path, **over)
    state = engine.RunState()
    epoch_under(HostSyncs(), ctx, state)  # warm: the augmentation's constants are on the device
    state.next_epoch()
    rec = HostSyncs()
    tr = epoch_under(rec, ctx, state)
    n = len(ctx.train_loader)
    assert n == 12 and rec.step == n
    # One read, of the whole epoch's block of losses, after the last step; nothing else.
    assert rec.syncs == [(n, "device-to-host copy")], rec.syncs
    # The step's copies to the device: the batch, its labels and its indices, each queued without waiting.
    per_step = [[c for c in rec.copies if c[0] == s] for s in range(1, n + 1)]
    assert all(len(c) == 3 and all(nb for _, _, nb in c) for c in per_step), rec.copies
    assert tr["train_images"] == n  # the read's made-up values: one image per step


def test_reads_come_at_the_tensorboard_cadence_only(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    ctx = device_ctx(data, tmp_path, tensorboard=True, tensorboard_every=5)
    tb, tb_steps = run_folder.open_tensorboard(ctx.out, ctx.cfg, epoch=0, global_step=0, is_main=True, log=ctx.log)
    ctx = dataclasses.replace(ctx, tb=tb, tb_steps=tb_steps)
    try:
        state = engine.RunState()
        rec = HostSyncs()
        epoch_under(rec, ctx, state)
    finally:
        tb.close()
        tb_steps.close()
    # Steps 5 and 10 (the scalars) and 12 (the epoch's end), one read each: every rank reads there.
    assert [s for s, what in rec.syncs if what == "device-to-host copy"] == [5, 10, 12], rec.syncs
    assert all(what == "device-to-host copy" or s == 1 for s, what in rec.syncs), rec.syncs  # step 1: constants


def test_evaluation_reads_the_device_once_per_pass(data: Path, tmp_path: Path) -> None:
    ctx = device_ctx(data, tmp_path)
    model = ctx.eval_model
    rec = HostSyncs()
    model.register_forward_pre_hook(lambda m, i: setattr(rec, "step", rec.step + 1))
    with recording(HostSyncs()):  # warm: constants on the device
        evaluate(model, ctx.val_ds, ctx.augment, ctx.prec, batch_size=16, workers=0)
    for ten_crop, return_probs in ((False, False), (True, True)):
        rec.step, rec.syncs, rec.copies = 0, [], []
        with recording(rec):
            r = evaluate(model, ctx.val_ds, ctx.augment, ctx.prec, batch_size=16, workers=0, ten_crop=ten_crop,
                         return_probs=return_probs)
        batches = -(-len(ctx.val_ds) // 16)
        assert batches == 4 and rec.step == batches
        # After the last batch: the sums (and the probabilities), one copy each.
        assert rec.syncs == [(batches, "device-to-host copy")] * (2 if return_probs else 1), rec.syncs
        assert all(nb for _, _, nb in rec.copies) and len(rec.copies) == 2 * batches, rec.copies  # images, labels
        assert r.n == 1  # the made-up read: ones


def test_the_loader_page_locks_labels_and_indices_for_a_gpu(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a GPU, page-locking is recorded instead of done. A copy from pageable memory waits for
    # the stream even with non_blocking=True, so what the step copies must come page-locked.
    from alexnet.data.format import PreparedDataset

    pinned: list[torch.Tensor] = []

    def pin(t: torch.Tensor) -> torch.Tensor:
        pinned.append(t)
        return t

    class NoRegister:
        def cudaHostRegister(self, *a: Any) -> int:
            return 1  # refused: the image buffers stay pageable here (they are page-locked in place on a GPU)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: NoRegister())
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    ds = PreparedDataset(data, "train")
    for pin_memory, expect in ((False, 0), (True, 2)):
        pinned.clear()
        loader = BatchLoader(ds, 16, shuffle=True, seed=0, workers=0, pin_memory=pin_memory)
        b = next(iter(loader.iterate()))
        loader.close()
        assert len(pinned) == expect
        if expect:
            assert pinned[0] is b.labels and pinned[1] is b.indices


def test_the_fused_update_only_where_the_step_is_compiled(data: Path, tmp_path: Path) -> None:
    # Uncompiled, the fused update is a Python loop of small kernels per parameter, slower than
    # PaperSGD's foreach passes; the device does not decide.
    from alexnet.perf.steps import optimizer_label

    for compile, label in ((False, "PaperSGD §5 (foreach)"), (True, "PaperSGD §5 (fused per parameter, compiled)")):
        cfg = TrainConfig.from_dict({"model": "alexnet-cifar", "data": str(data), "batch_size": 16, "workers": 0,
                                     "progress": False, "device": "cpu", "compile": compile})
        ctx = engine.setup(cfg, tmp_path / str(compile))
        assert (ctx.step_fn.fused is not None) == compile
        assert optimizer_label(ctx.step_fn) == label


def step_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb" / "steps"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_loss_lr_and_speed_every_n_steps(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from alexnet.cli import main
    from alexnet.engine.optim import Schedule

    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(out), "--batch-size", "16",
                 "--workers", "0", "--no-progress", "--epochs", "2", "--tensorboard", "--set", "max_steps_per_epoch=5",
                 "--set", "tensorboard_every=2", "--set", "schedule=cosine"]) == 0
    s = step_scalars(out)
    assert set(s) == {"step/train_loss", "step/lr", "step/img_per_s"}
    assert [k for k, _ in s["step/train_loss"]] == [2, 4, 6, 8, 10]  # 10 steps in all, every 2nd
    assert all(0.5 < v < 5 for _, v in s["step/train_loss"])  # ~ln 10 at the start, per-step values
    cfg = TrainConfig.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    sched = Schedule(cfg, 5)
    assert [(k, pytest.approx(v, rel=1e-6)) for k, v in s["step/lr"]] == [(k, sched.lr_at(k - 1)) for k in (2, 4, 6, 8, 10)]
    assert [k for k, _ in s["step/img_per_s"]] == [2, 4, 6, 8, 10] and all(v > 0 for _, v in s["step/img_per_s"])
    # 0 turns them off; the per-epoch scalars stay.
    off = tmp_path / "off"
    assert main(["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(off), "--batch-size", "16",
                 "--workers", "0", "--no-progress", "--epochs", "1", "--tensorboard", "--set", "max_steps_per_epoch=2",
                 "--set", "tensorboard_every=0"]) == 0
    assert not (off / "tb" / "steps").exists() and list((off / "tb").glob("events.out.tfevents.*"))


def test_a_tensorboard_cadence_without_tensorboard_is_warned_about(data: Path, tmp_path: Path, capsys) -> None:
    from alexnet.cli import main

    assert main(["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(tmp_path / "run"), "--batch-size",
                 "16", "--workers", "0", "--no-progress", "--epochs", "1", "--set", "max_steps_per_epoch=1",
                 "--set", "tensorboard_every=5"]) == 0
    assert "warning: tensorboard_every=5 has no effect without tensorboard (--tensorboard)" in capsys.readouterr().out


def test_the_timed_train_run_counts_host_syncs_from_the_warm_epoch_on(data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # On CUDA torch.cuda.set_sync_debug_mode("warn") makes each synchronising call a warning; here
    # the switch is recorded (no GPU), and a sync warning is raised from the loop's own log line.
    import warnings

    from alexnet.perf import training

    modes: list[str] = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: modes.append(mode))
    seen: list[str] = []

    def log(line: str) -> None:
        seen.append(line)
        if modes == ["warn"] and line.startswith("epoch"):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)

    cfg = training.train_config(data, device="cpu", batch=16, workers=0, decode="cpu", amp="none", channels_last=False,
                                compile=False, save_every=3, model="alexnet-cifar", max_steps_per_epoch=4)
    res = training.timed_run(cfg, tmp_path / "run", log=log, count_syncs=True)
    assert modes == ["warn", "default"]  # on after the first epoch's summary line, off at the end
    assert res["host_syncs_last_epoch_total"] == 1 and list(res["host_syncs_last_epoch"]) == ["tests/test_gpu_path.py:" +
                                                                                             str(_line_of("warnings.warn(\"called"))]
    assert res["steps_per_epoch"] == 4 and res["train_images_per_epoch"] == 64 and res["val_images"] == 50
    assert 0 < res["img_per_s_epoch_wall"] < res["img_per_s"] and res["save_every"] == 3
    assert sum(line.startswith("epoch") for line in seen) == 2


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if text in line)
