"""``alexnet export RUN --format safetensors|onnx|torchscript --out PATH``.

* ``safetensors``: the weights with this project's metadata (model name and options, classes,
  input size and normalisation), loadable by every ``alexnet`` command; from torchvision's
  ``.pth`` too, which turns it into a file that holds no pickle at all.
* ``onnx``: the network as an ONNX graph with a dynamic batch axis, input ``images``
  (N×3×S×S float32, already normalised as the model expects) and output ``logits`` (N×classes);
  checked with ``onnx.checker``. The class list and preprocessing go into the model's
  ``metadata_props`` under the key ``alexnet``.
* ``torchscript``: ``torch.jit.trace`` of the network in eval mode, checked to give the same
  outputs as the model.

The exported graphs take normalised crops, not image files: the mean image (§2) belongs to the
training set, not to the network; ``meta["input_norm"]`` says which normalisation to apply.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import UserError

FORMATS = ("safetensors", "onnx", "torchscript")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_WEIGHTS", help="run folder, .safetensors, or torchvision's alexnet-owt-*.pth")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="PATH")


def example_input(meta: dict[str, Any], batch: int = 2) -> torch.Tensor:
    s = int(meta["input_size"])
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))  # N×3×S×S


def export_torchscript(model: nn.Module, meta: dict[str, Any], out: Path) -> Path:
    """Trace in eval mode (dropout off) and check the traced module reproduces the model."""
    from alexnet.models import lrn_fast

    x = example_input(meta)
    with torch.no_grad(), lrn_fast.use_mode("plain"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice; tracing itself is checked below
        traced = torch.jit.trace(model, x, check_trace=False)
        if not torch.allclose(traced(x), model(x), rtol=1e-4, atol=1e-5):
            raise UserError(f"{out}: the traced TorchScript module does not reproduce the model")
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(out), _extra_files={"alexnet.json": json.dumps(meta)})
    return out


def export_onnx(model: nn.Module, meta: dict[str, Any], out: Path) -> Path:
    """torch.onnx's dynamo exporter (the default in recent torch), falling back to the legacy
    TorchScript-based exporter if it fails; either way with a dynamic batch axis."""
    import onnx

    from alexnet.models import lrn_fast

    x = example_input(meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    first_error: Exception | None = None
    with torch.no_grad(), lrn_fast.use_mode("plain"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (x,), str(out), dynamo=True, input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        except Exception as e:  # the exporters raise many types; fall back, and report both if both fail
            first_error = e
            try:
                torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=["images"], output_names=["logits"],
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
            except Exception as e2:
                raise UserError(f"{out}: ONNX export failed ({str(first_error).splitlines()[0][:150]}; "
                                f"legacy exporter: {str(e2).splitlines()[0][:150]})") from None
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    m.metadata_props.add(key="alexnet", value=json.dumps(meta))
    onnx.save(m, str(out))
    return out


def run(args: argparse.Namespace) -> int:
    from alexnet.engine import checkpoint as ckpt
    from alexnet.engine.inference import load

    trained = load(args.run, "cpu")
    model, meta = trained.model.eval(), dict(trained.meta)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the file to write")
    if args.format == "safetensors":
        ckpt.save_weights(model, out, meta, trained.stats)
    elif args.format == "onnx":
        export_onnx(model, meta, out)
    else:
        export_torchscript(model, meta, out)
    print(out)
    return 0
