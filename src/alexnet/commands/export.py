"""``alexnet export RUN --format safetensors|onnx|pt2|hub --out PATH``.

* ``safetensors``: the weights with this project's metadata (model name and options, classes,
  input size and normalisation, the training recipe, final metrics and git commit) and the
  training set's statistics, loadable by every ``alexnet`` command; from torchvision's ``.pth``
  too, which turns it into a file that holds no pickle at all.
* ``onnx`` and ``pt2`` (``torch.export``): self-contained graphs. Input ``images``: uint8 RGB,
  N×3×H×W at the size the training images were stored at (§2: the shorter side rescaled to 256
  and the central 256×256 patch; 36×36 for the built-in data); output ``probs``: N×classes
  softmax probabilities. The central crop and the normalisation the network was trained with
  (§2: minus the training set's mean image) are inside the graph, so onnxruntime (or
  ``torch.export.load``) alone gives the top-5 of ``alexnet predict``. ``--network-only`` exports
  the bare network instead (input: normalised crops N×3×S×S float32, output ``logits``). The
  batch axis is dynamic. The metadata (classes, class names, sizes) is stored in the ONNX model's
  ``metadata_props`` and in the ``.pt2`` archive's ``extra/alexnet.json``, under ``alexnet``.
* ``hub``: a folder for the Hugging Face Hub (``model.safetensors``, ``config.json`` and a model
  card ``README.md``); see :mod:`alexnet.engine.hf_hub`.

TorchScript (``torch.jit.trace`` / ``script``) is deprecated in torch 2.14 in favour of
``torch.export``; ``--format torchscript`` is refused with a pointer to ``pt2``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet.commands.common import optional_engine_module
from alexnet.errors import UserError
from alexnet.files import TMP_SUFFIX, atomic_write_bytes

if TYPE_CHECKING:  # imported in the functions: the parser (alexnet --help) loads no torch
    import torch
    from torch import nn

FORMATS = ("safetensors", "onnx", "pt2", "hub")
REMOVED = {"torchscript": "TorchScript is deprecated in torch 2.14 (torch.jit.trace and torch.jit.script warn so); "
                          "use --format pt2 (torch.export), loaded with torch.export.load(PATH).module()"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_WEIGHTS", help="run folder, .safetensors, or torchvision's alexnet-owt-*.pth")
    p.add_argument("--format", required=True, choices=FORMATS + tuple(REMOVED), metavar="{" + ",".join(FORMATS) + "}",
                   help="safetensors (weights + metadata), onnx / pt2 (self-contained graphs: uint8 images in, "
                        "probabilities out), hub (a Hugging Face Hub folder)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the file to write (hub: the folder); an existing file only if an earlier 'alexnet export' wrote "
                        "it, or with --force")
    p.add_argument("--force", action="store_true", help="replace whatever file is at --out")
    p.add_argument("--network-only", action="store_true",
                   help="onnx/pt2: the bare network (normalised crops in, logits out), without the preprocessing")
    p.add_argument("--data", default=None, help="the training set, for weights files that do not carry its mean image")


def example_images(size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """uint8 N×3×H×W (the self-contained graphs' input)."""
    import torch

    return torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def example_input(meta: dict[str, Any], batch: int = 2) -> torch.Tensor:
    """Normalised crops N×3×S×S float32 (the bare network's input)."""
    import torch

    s = int(meta["input_size"])
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))


def _graph(trained: Any, network_only: bool, data: str | None) -> tuple[nn.Module, torch.Tensor, list[str]]:
    """The module to export, an example input, and the output's name."""
    if network_only:
        return trained.model.eval(), example_input(trained.meta), ["logits"]
    from alexnet.engine.inference import image_classifier

    module = image_classifier(trained, data)
    return module, example_images(module.image_size), ["probs"]


def _check(exported: Any, module: nn.Module, x: torch.Tensor, out: Path, what: str) -> None:
    import torch

    with torch.no_grad():
        x3 = torch.cat([x, x[:1]])  # another batch size than the example's
        if not torch.allclose(exported(x3), module(x3), rtol=1e-4, atol=1e-5):
            raise UserError(f"{out}: the exported {what} does not reproduce the model")


def export_pt2(module: nn.Module, x: torch.Tensor, meta: dict[str, Any], out: Path) -> Path:
    """``torch.export`` with a dynamic batch axis, saved with ``torch.export.save``; checked to
    reproduce the module at another batch size."""
    import torch

    from alexnet.models import lrn_fast

    with torch.no_grad(), lrn_fast.use_mode("plain"):
        try:
            ep = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        except Exception as e:  # torch.export raises many types; one line names the cause
            raise UserError(f"{out}: torch.export failed ({str(e).splitlines()[0][:200]})") from None
        _check(ep.module(), module, x, out, "program")
        buf = io.BytesIO()
        torch.export.save(ep, buf, extra_files={"alexnet.json": json.dumps(meta)})
    atomic_write_bytes(out, buf.getvalue())
    return out


def export_onnx(module: nn.Module, x: torch.Tensor, meta: dict[str, Any], out: Path, output_name: str = "probs") -> Path:
    """torch.onnx's dynamo exporter (the default in recent torch), falling back to the legacy
    TorchScript-based exporter if it fails; either way with a dynamic batch axis."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # The exporters write a path: a temporary one beside ``out``, whose bytes then go through the one
    # atomic writer, so a full disk or a failed export never leaves a torn file or harms an earlier one.
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        _export_onnx(module, x, meta, Path(name), out, output_name)
    finally:
        os.unlink(name)
    return out


def _export_onnx(module: nn.Module, x: torch.Tensor, meta: dict[str, Any], tmp: Path, out: Path, output_name: str) -> None:
    import onnx
    import torch

    from alexnet.models import lrn_fast

    first_error: Exception | None = None
    names = dict(input_names=["images"], output_names=[output_name])
    with torch.no_grad(), lrn_fast.use_mode("plain"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(module, (x,), str(tmp), dynamo=True, dynamic_shapes=({0: batch},), external_data=False,
                              verbose=False, **names)
        except Exception as e:  # the exporters raise many types; fall back, and report both if both fail
            first_error = e
            try:
                torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=17, **names,
                                  dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}})
            except Exception as e2:
                raise UserError(f"{out}: ONNX export failed ({str(first_error).splitlines()[0][:150]}; "
                                f"legacy exporter: {str(e2).splitlines()[0][:150]})") from None
    m = onnx.load(str(tmp))
    onnx.checker.check_model(m, full_check=True)
    m.metadata_props.add(key="alexnet", value=json.dumps(meta))
    atomic_write_bytes(out, m.SerializeToString())


def hub_module() -> Any:
    """:mod:`alexnet.engine.hf_hub`, or one line saying how to install its optional dependency."""
    return optional_engine_module("hf_hub", "huggingface_hub", "huggingface_hub", "the Hugging Face Hub", "hub")


WRITTEN_BY = "alexnet export"


def written_by_export(path: Path) -> bool:
    """Whether ``path`` is an earlier output of ``alexnet export`` (which a rerun may replace):
    weights marked so, an ONNX model or a ``.pt2`` archive carrying this project's metadata."""
    from alexnet.engine.checkpoint import written_by

    if written_by(path) == WRITTEN_BY:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("extra/alexnet.json") for n in z.namelist())
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and others: not an ONNX model
        return False
    return any(p.key == "alexnet" for p in m.metadata_props)


def run(args: argparse.Namespace) -> int:
    from alexnet.engine import checkpoint as ckpt
    from alexnet.engine.inference import load
    from alexnet.files import nonempty_path, output_file

    if args.format in REMOVED:
        raise UserError(f"--format {args.format}: {REMOVED[args.format]}")
    if args.network_only and args.format not in ("onnx", "pt2"):
        raise UserError(f"--network-only applies to --format onnx and pt2, not {args.format}")
    if args.format == "hub":
        if args.force:
            raise UserError("--force does not apply to --format hub: the Hub folder is always a new or empty one")
        out = nonempty_path(args.out, "--out")
        hub_module().export_folder(load(args.run, "cpu"), out)
        print(out)
        return 0
    with output_file(args.out, force=args.force, ours=written_by_export) as out:
        trained = load(args.run, "cpu")
        model, meta = trained.model.eval(), dict(trained.meta)
        if args.format == "safetensors":
            ckpt.save_weights(model, out, meta, trained.stats, written_by=WRITTEN_BY)
        else:
            module, x, output = _graph(trained, args.network_only, args.data)
            graph_meta = {**meta, "graph": "network" if args.network_only else "images_to_probs"}
            if args.format == "onnx":
                export_onnx(module, x, graph_meta, out, output[0])
            else:
                export_pt2(module, x, graph_meta, out)
    print(out)
    return 0
