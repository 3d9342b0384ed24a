"""``parallel=owt`` (Krizhevsky 2014, "one weird trick"; alexnet.engine.owt) on the CPU with gloo, at
2 and 4 processes: the forward and backward of a small AlexNet equal one process's to rounding;
the bytes each process hands to collectives equal the arithmetic of its layers, beside DDP's for
the same global batch; training equals one process within the DDP test's noise floor; a SIGTERM
and --resume are exact, bit for bit; a checkpoint resumes at another world size (full tensors in
the single-process layout); what cannot take effect is refused in one line or warned about."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.config import TrainConfig
from alexnet.data.sources import synthetic
from alexnet.data.writer import write_arrays
from alexnet.engine import checkpoint as ckpt
from alexnet.engine.distributed import DistInfo
from alexnet.engine.train import check_parallel
from alexnet.errors import UserError
from alexnet.perf.comm import expected_owt_payloads, sent_bytes
from test_distributed import (DROPOUT, TORCHRUN, data, env, launcher, one, rows, run_ok, stop_after,  # noqa: F401
                              strip, torchrun, train_args, weights)

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")

OWT = ("--parallel", "owt")

# Each rank: a small AlexNet (all three FC layers, no dropout) and a global batch of 8; one
# process's forward and backward on the whole batch (every rank computes it, from the same seed)
# against the owt model's on this rank's slice; then the bytes each layout hands to collectives in
# one step (alexnet.perf.comm: DDP's buckets through a comm hook, DTensor's through a dispatch
# mode). Rank 0 writes the result as JSON to argv[1].
WORKER = r"""
import copy, json, sys
import torch, torch.nn.functional as F
from torch import nn
from alexnet.models.alexnet import AlexNet
from alexnet.engine import checkpoint as ckpt, distributed, owt
from alexnet.perf.comm import CommCounter, count_ddp

info = distributed.from_env()
distributed.init(info, torch.device("cpu"))
K, r, B, C = info.world_size, info.rank, 8, int(sys.argv[2])
torch.manual_seed(0)
model = AlexNet(num_classes=C, widths=(8, 16, 16, 16, 16), hidden=32, dropout=0.0, adaptive_pool=True, input_size=64)
ref, plain = copy.deepcopy(model), copy.deepcopy(model)
x, y = torch.randn(B, 3, 64, 64), torch.randint(0, C, (B,))
ref_out = ref(x)
F.cross_entropy(ref_out, y).backward()
mine = slice(r * B // K, (r + 1) * B // K)

m, _ = owt.parallelize(model, torch.device("cpu"), K)
counter = CommCounter()
count_ddp(m, counter)
with counter:
    out = m(x[mine])
    F.cross_entropy(out, y[mine]).backward()
grads = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for n, p in ckpt.unwrap(m).named_parameters()}
sharded = owt.sharded_parameters(m)
full = ckpt.model_state_dict(m)

ddp = nn.parallel.DistributedDataParallel(plain)
ddp_counter = CommCounter()
count_ddp(ddp, ddp_counter)
with ddp_counter:
    F.cross_entropy(ddp(x[mine]), y[mine]).backward()

result = {
    "logits": float((out.detach() - ref_out[mine].detach()).abs().max()),
    "logit_scale": float(ref_out.detach().abs().max()),
    "grads": {n: float((grads[n] - q.grad).abs().max() / q.grad.abs().max()) for n, q in ref.named_parameters()},
    "weights_equal": all(torch.equal(full[k], v) for k, v in ref.state_dict().items()),
    "sharded": sharded,
    "local_rows": {n: ckpt.unwrap(m).get_parameter(n).to_local().shape[0] for n in sharded},
    "trunk_params": sum(p.numel() for n, p in ref.named_parameters() if n.startswith("features")),
    "params": sum(p.numel() for p in ref.parameters()),
    "owt": counter.calls, "ddp": ddp_counter.calls,
}
if r == 0:
    open(sys.argv[1], "w").write(json.dumps(result))
distributed.shutdown()
"""


# (processes, classes): 10 classes do not split over 4 processes, so fc8 stays data-parallel there
@pytest.fixture(scope="module", params=[(2, 8), (4, 8), (4, 10)], ids=["k2", "k4", "k4-fc8-data-parallel"])
def module_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, int, dict]:
    k, c = request.param
    tmp = tmp_path_factory.mktemp(f"owt-{k}-{c}")
    (tmp / "worker.py").write_text(WORKER)
    run_ok(torchrun(str(tmp / "worker.py"), str(tmp / "result.json"), str(c), nproc=k))
    return k, c, json.loads((tmp / "result.json").read_text())


def test_forward_and_backward_equal_one_process_to_rounding(module_run: tuple[int, int, dict]) -> None:
    k, c, r = module_run
    split_fc8 = c % k == 0
    assert r["sharded"] == [f"classifier.{i}.{w}" for i in ((0, 2, 4) if split_fc8 else (0, 2)) for w in ("weight", "bias")]
    # fc6 and fc8 column-wise (rows split: 32/K units, C/K classes), fc7 row-wise (its bias whole)
    rows_ = {"classifier.0.weight": 32 // k, "classifier.0.bias": 32 // k, "classifier.2.weight": 32, "classifier.2.bias": 32}
    if split_fc8:
        rows_.update({"classifier.4.weight": c // k, "classifier.4.bias": c // k})
    assert r["local_rows"] == rows_
    assert r["weights_equal"]  # the gathered state_dict is the single-process model's, exactly
    assert r["logits"] <= 1e-6 * r["logit_scale"], r["logits"]
    # every gradient, trunk (DDP's average) and FC shards (divided by K), within fp32 rounding of
    # one process's on the whole batch; a missing 1/K would be off by a factor of K
    assert max(r["grads"].values()) < 1e-5, r["grads"]


def test_bytes_per_step_are_the_arithmetic_of_the_layers_and_ddp_sends_every_gradient(
        module_run: tuple[int, int, dict]) -> None:
    k, c, r = module_run
    b, f, h = 8, 16 * 6 * 6, 32  # global batch, pool5 features, hidden units; fp32: 4 bytes
    owt: dict[str, int] = {}
    for name, n in r["owt"]:
        owt[name] = owt.get(name, 0) + n
    ddp = sum(n for name, n in r["ddp"] if name == "ddp_all_reduce")
    assert {name for name, _ in r["ddp"]} == {"ddp_all_reduce"}
    assert ddp == 4 * r["params"]  # plain DDP: every gradient, whatever the batch
    fc8 = h * c + c
    if c % k == 0:
        assert owt["ddp_all_reduce"] == 4 * r["trunk_params"]  # owt's DDP: the conv layers' only
        # forward: fc6 gathers the batch's pool5 (each rank gives its B/K rows), fc7's partial sums
        # are reduce-scattered (B × h in), fc8 gathers its input (B/K × h) and hands back the logits
        # (B × C/K in: an all-to-all; gloo has none, so DTensor all-gathers); backward: the mirror images.
        gathered = b // k * f + b // k * h + b * c // k + b // k * h + b // k * c
        scattered = b * h + b * h + b * f
    else:  # fc8 data-parallel: its gradients ride in DDP's all-reduce, its activations stay put
        assert owt["ddp_all_reduce"] == 4 * (r["trunk_params"] + fc8)
        gathered = b // k * f + b // k * h
        scattered = b * h + b * f
    assert owt.get("all_gather", 0) + owt.get("all_to_all", 0) == 4 * gathered
    assert owt["reduce_scatter"] == 4 * scattered
    assert set(owt) <= {"all_gather", "all_to_all", "reduce_scatter", "ddp_all_reduce"}
    # the library's arithmetic (what the benchmark prints beside its measurement) says the same
    fcs = [(f, h), (h, h), (h, c)]
    assert expected_owt_payloads(fcs, r["trunk_params"], b, k) == {
        "ddp_all_reduce": owt["ddp_all_reduce"], "all_gather": 4 * gathered, "reduce_scatter": 4 * scattered}
    # what each rank then sends: here the FC gradients outweigh a batch of 8's activations
    assert sent_bytes(owt, k) < sent_bytes({"ddp_all_reduce": ddp}, k)


# -- training through the command ---------------------------------------------------------------------


def close(a_run: Path, b_run: Path, n_train: int, n_val: int, tol: float = 1e-5) -> None:
    """The noise floor of tests/test_distributed.py's assert_close_to: weights within ``tol``, the
    per-epoch numbers as close, the runs having moved."""
    a, b = weights(a_run), weights(b_run)
    init = torch.load(ckpt.list_checkpoints(b_run)[0], weights_only=True)["model"]
    assert sorted(a) == sorted(b)
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= tol, k
    assert any(float((a[k] - init[k]).abs().max()) > 1e-3 for k in a)
    for ra, rb in zip(rows(a_run), rows(b_run), strict=True):
        assert rb["val_images"] == ra["val_images"] == n_val and rb["train_images"] == ra["train_images"] == n_train
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        assert abs(ra["val_top1_err"] - rb["val_top1_err"]) <= 1 / n_val + 1e-9


def test_two_processes_owt_equal_one_process(data: Path, one: Path, tmp_path: Path) -> None:
    run = tmp_path / "owt"
    r = run_ok(torchrun("-m", "alexnet", *train_args(data, run, *OWT)))
    assert "(2 processes)" in r.stdout and "FC layers split over the 2 processes (parallel=owt)" in r.stdout
    close(one, run, 192, 25)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["config"]["parallel"] == "owt"  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 classes (alexnet-cifar's classifier splits over 4 processes), 192 train and 24 val images."""
    keep = [(x[y < 8], y[y < 8]) for x, y in (synthetic.generate(240, 36, 0, split="train"),
                                                  synthetic.generate(30, 36, 0, split="val"))]
    return write_arrays(tmp_path_factory.mktemp("owt8") / "ds", {"train": keep[0], "val": keep[1]},
                        classes=synthetic.CLASS_NAMES[:8])


@pytest.mark.slow
def test_four_processes_owt_equal_one_process_and_resume_on_two(data8: Path, tmp_path: Path) -> None:
    single, four = tmp_path / "one", tmp_path / "four"
    run_ok([sys.executable, "-m", "alexnet", *train_args(data8, single)])
    run_ok(torchrun("-m", "alexnet", *train_args(data8, four, *OWT), nproc=4))
    close(single, four, 192, 24)
    # the same checkpoint (full tensors) continued by 2 owt processes for a third epoch
    r = run_ok(torchrun("-m", "alexnet", "train", "--out", str(four), "--resume", "--epochs", "3"))
    assert "resuming a checkpoint of 4 process(es) with 2" in r.stdout
    run_ok([sys.executable, "-m", "alexnet", "train", "--out", str(single), "--resume", "--epochs", "3"])
    close(single, four, 192, 24)


@pytest.mark.slow
def test_sigterm_then_resume_is_exact_with_dropout(data: Path, launcher: Path, tmp_path: Path) -> None:
    whole, run = tmp_path / "whole", tmp_path / "run"
    run_ok(torchrun("-m", "alexnet", *train_args(data, whole, *DROPOUT, *OWT)))
    stop_after(torchrun(str(launcher), *train_args(data, run, *DROPOUT, *OWT)), 9, tmp_path)
    d = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))  # type: ignore[arg-type]
    assert d["rng"]["world_size"] == 2
    assert d["model"]["classifier.1.weight"].shape == (10, 1024)  # whole, not a shard (alexnet-cifar: dropout, fc)
    assert d["optimizer"]["state"][3]["velocity"].shape == (10, 1024)
    r = run_ok(torchrun("-m", "alexnet", "train", "--out", str(run), "--resume"))
    assert "resumed from" in r.stdout and "ckpt-000000009.pt" in r.stdout
    assert (run / ckpt.WEIGHTS).read_bytes() == (whole / ckpt.WEIGHTS).read_bytes()
    assert strip(rows(run)) == strip(rows(whole))


@pytest.mark.slow
def test_resume_at_another_world_size_and_in_one_process(data: Path, one: Path, launcher: Path, tmp_path: Path) -> None:
    # owt on 2 processes for 4 steps, one process for 5 (owt inert there: a warning), owt on 2 to
    # the end: within the noise floor of one uninterrupted process
    run = tmp_path / "run"
    stop_after(torchrun(str(launcher), *train_args(data, run, *OWT)), 4, tmp_path)
    out, _ = stop_after([sys.executable, str(launcher), "train", "--out", str(run), "--resume"], 5, tmp_path)
    assert "warning: parallel=owt has no effect in a single process" in out
    assert "resuming a checkpoint of 2 process(es) with 1" in out
    r = run_ok(torchrun("-m", "alexnet", "train", "--out", str(run), "--resume"))
    assert "resuming a checkpoint of 1 process(es) with 2" in r.stdout
    close(one, run, 192, 25)
    # 10 classes do not split over 4 processes: refused in one line by every rank, nothing written
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    bad = subprocess.run(torchrun("-m", "alexnet", "train", "--out", str(run), "--resume", "--epochs", "3", nproc=4),
                         capture_output=True, text=True, timeout=300, env=env())
    assert bad.returncode != 0 and "exitcode  : 2" in bad.stderr
    # each of the 4 ranks says the same one line (their stderr lines may interleave in the pipe)
    line = ("alexnet train: error: parallel=owt with 4 processes: FC layer classifier.0 has 10 outputs, "
            "not divisible by 4 processes")
    assert bad.stderr.count(line) == bad.stderr.count("alexnet train: error:") == 4, bad.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


# -- what cannot take effect -----------------------------------------------------------------------------


def test_owt_with_the_two_tower_split_is_refused_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(tmp_path / "run"), "--model", "alexnet",
                        "--model-parallel", "2", "--parallel", "owt", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120, env=env())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "alexnet train: error: parallel=owt with model_parallel=2: the FC layers cannot be split both between "
        "processes (owt) and between the §3.2 towers; choose one"]
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("compile", True, "parallel=owt with compile=true"),
    ("amp", "fp16", "parallel=owt with amp=fp16"),
])
def test_owt_refuses_what_it_does_not_handle_under_torchrun(field: str, value: object, message: str) -> None:
    cfg = TrainConfig(parallel="owt", **{field: value})
    check_parallel(cfg, DistInfo())  # one process: owt is inert there (a warning), so nothing to refuse
    with pytest.raises(UserError, match=message):
        check_parallel(cfg, DistInfo(rank=0, world_size=2))


def test_parallel_is_a_validated_config_field() -> None:
    assert TrainConfig().parallel == "ddp"
    with pytest.raises(UserError, match=r"parallel='fsdp' is not valid; accepted: ddp, owt"):
        TrainConfig.from_dict({"parallel": "fsdp"})


def test_sent_bytes_follows_each_collectives_algorithm() -> None:
    k = 4
    assert sent_bytes({"ddp_all_reduce": 1000}, k) == 1500  # ring: 2 (K-1)/K
    assert sent_bytes({"all_gather": 100}, k) == 300  # its shard to each of K-1 peers
    assert sent_bytes({"reduce_scatter": 1000, "all_to_all": 1000}, k) == 1500  # (K-1)/K each
    assert np.isclose(sent_bytes({"ddp_all_reduce": 1}, 1), 0)
