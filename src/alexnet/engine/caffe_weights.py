"""Caffe's published AlexNet weights (``bvlc_alexnet.caffemodel``, and ``bvlc_reference_caffenet``)
as this project's ``alexnet``.

A ``.caffemodel`` is a serialised ``caffe.NetParameter`` (Google protocol buffers). The messages
it needs are defined here at run time with protobuf's descriptor API, a subset of Caffe's
``caffe.proto`` with its field numbers, so neither Caffe nor its generated code is needed; the
parser skips the fields the subset leaves out. Both layouts Caffe wrote are read: the current
``layer`` (LayerParameter, a string ``type``) and the legacy ``layers`` (V1LayerParameter, an enum
``type``, blobs with num/channels/height/width instead of a shape), the one the BVLC files use.

How Caffe's nets differ from the paper's, and the options of :class:`alexnet.models.AlexNet` that
say so (:data:`alexnet.models.alexnet.CAFFE_OPTIONS`): 227×227 crops and an unpadded conv1 (the
same 55×55 maps), LRN with k = 1 and alpha divided by n (``lrn="released"``, ``lrn_k=1``), and
for CaffeNet pooling before normalisation. Caffe's pooled sizes are rounded up, ours down; on
55, 27 and 13 they agree. The weight blobs have PyTorch's layouts: a grouped convolution's
kernels are out × in/groups × k × k, tower 0's first, as ``groups=2`` holds them; fc6 reads the
256×6×6 maps flattened C×H×W, as ``torch.flatten`` does.

Caffe's networks read BGR images minus a mean (``ilsvrc_2012_mean.npy``, a 256×256 BGR mean
image, or its per-channel value 104, 117, 123): the weights' metadata says
``channel_order: "bgr"`` and ``input_mean: "weights"``, and the mean is stored (as RGB, like every
mean image of this project) with the weights, so ``predict``, ``evaluate``, the exports and the
hubs normalise as Caffe did (:mod:`alexnet.engine.inference`).

``protobuf`` is an optional dependency (``pip install 'alexnet[caffe]'``); this module imports it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError
from torch import nn

from alexnet import models
from alexnet.errors import UserError
from alexnet.models.alexnet import PAPER_WIDTHS
from alexnet.models.layers import PAPER_LRN

# -- the subset of caffe.proto ---------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "int32": _F.TYPE_INT32,
            "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32, "bool": _F.TYPE_BOOL}

# V1LayerParameter.LayerType, all of its values (a text-format V1 prototxt names them).
V1_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
    "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7,
    "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11,
    "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33,
    "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}
# The V1 enum's names of the layers an AlexNet has, as the current format spells them.
_V1_NAMES = {"CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "POOLING": "Pooling",
             "RELU": "ReLU", "DROPOUT": "Dropout"}

_ENUMS: dict[str, dict[str, dict[str, int]]] = {
    "V1LayerParameter": {"LayerType": V1_TYPES},
    "PoolingParameter": {"PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}, "RoundMode": {"CEIL": 0, "FLOOR": 1}},
    "LRNParameter": {"NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}},
}
# message -> fields (label, type, name, number, default); caffe.proto's numbers. A type that is not
# a scalar is a message of this file, or an enum of the message ("Message.Enum").
_MESSAGES: dict[str, list[tuple[str, str, str, int, str | None]]] = {
    "BlobShape": [("repeated", "int64", "dim", 1, None)],
    "BlobProto": [("optional", "BlobShape", "shape", 7, None), ("repeated", "float", "data", 5, None),
                  ("repeated", "double", "double_data", 8, None), ("optional", "int32", "num", 1, "0"),
                  ("optional", "int32", "channels", 2, "0"), ("optional", "int32", "height", 3, "0"),
                  ("optional", "int32", "width", 4, "0")],
    "ConvolutionParameter": [("optional", "uint32", "num_output", 1, None), ("optional", "bool", "bias_term", 2, "true"),
                             ("repeated", "uint32", "pad", 3, None), ("repeated", "uint32", "kernel_size", 4, None),
                             ("repeated", "uint32", "stride", 6, None), ("optional", "uint32", "group", 5, "1"),
                             ("optional", "uint32", "pad_h", 9, None), ("optional", "uint32", "pad_w", 10, None),
                             ("optional", "uint32", "kernel_h", 11, None), ("optional", "uint32", "kernel_w", 12, None),
                             ("optional", "uint32", "stride_h", 13, None), ("optional", "uint32", "stride_w", 14, None),
                             ("repeated", "uint32", "dilation", 18, None)],
    "InnerProductParameter": [("optional", "uint32", "num_output", 1, None), ("optional", "bool", "bias_term", 2, "true"),
                              ("optional", "int32", "axis", 5, "1"), ("optional", "bool", "transpose", 6, "false")],
    "LRNParameter": [("optional", "uint32", "local_size", 1, "5"), ("optional", "float", "alpha", 2, "1"),
                     ("optional", "float", "beta", 3, "0.75"),
                     ("optional", "LRNParameter.NormRegion", "norm_region", 4, "ACROSS_CHANNELS"),
                     ("optional", "float", "k", 5, "1")],
    "PoolingParameter": [("optional", "PoolingParameter.PoolMethod", "pool", 1, "MAX"),
                         ("optional", "uint32", "pad", 4, "0"), ("optional", "uint32", "kernel_size", 2, None),
                         ("optional", "uint32", "stride", 3, "1"), ("optional", "uint32", "kernel_h", 5, None),
                         ("optional", "uint32", "kernel_w", 6, None), ("optional", "uint32", "stride_h", 7, None),
                         ("optional", "uint32", "stride_w", 8, None), ("optional", "uint32", "pad_h", 9, None),
                         ("optional", "uint32", "pad_w", 10, None), ("optional", "bool", "global_pooling", 12, "false"),
                         ("optional", "PoolingParameter.RoundMode", "round_mode", 13, "CEIL")],
    "ReLUParameter": [("optional", "float", "negative_slope", 1, "0")],
    "DropoutParameter": [("optional", "float", "dropout_ratio", 1, "0.5")],
    "InputParameter": [("repeated", "BlobShape", "shape", 1, None)],
    "LayerParameter": [("optional", "string", "name", 1, None), ("optional", "string", "type", 2, None),
                       ("repeated", "string", "bottom", 3, None), ("repeated", "string", "top", 4, None),
                       ("repeated", "BlobProto", "blobs", 7, None),
                       ("optional", "ConvolutionParameter", "convolution_param", 106, None),
                       ("optional", "DropoutParameter", "dropout_param", 108, None),
                       ("optional", "InnerProductParameter", "inner_product_param", 117, None),
                       ("optional", "LRNParameter", "lrn_param", 118, None),
                       ("optional", "PoolingParameter", "pooling_param", 121, None),
                       ("optional", "ReLUParameter", "relu_param", 123, None),
                       ("optional", "InputParameter", "input_param", 143, None)],
    "V1LayerParameter": [("repeated", "string", "bottom", 2, None), ("repeated", "string", "top", 3, None),
                         ("optional", "string", "name", 4, None),
                         ("optional", "V1LayerParameter.LayerType", "type", 5, None),
                         ("repeated", "BlobProto", "blobs", 6, None),
                         ("optional", "ConvolutionParameter", "convolution_param", 10, None),
                         ("optional", "DropoutParameter", "dropout_param", 12, None),
                         ("optional", "InnerProductParameter", "inner_product_param", 17, None),
                         ("optional", "LRNParameter", "lrn_param", 18, None),
                         ("optional", "PoolingParameter", "pooling_param", 19, None),
                         ("optional", "ReLUParameter", "relu_param", 30, None)],
    "NetParameter": [("optional", "string", "name", 1, None), ("repeated", "string", "input", 3, None),
                     ("repeated", "BlobShape", "input_shape", 8, None), ("repeated", "int32", "input_dim", 4, None),
                     ("repeated", "LayerParameter", "layer", 100, None),
                     ("repeated", "V1LayerParameter", "layers", 2, None)],
}
_PACKED = {("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "double_data")}  # [packed = true] in caffe.proto


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="alexnet_caffe_subset.proto", package="caffe", syntax="proto2")
    for name, fields in _MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for enum_name, values in _ENUMS.get(name, {}).items():
            enum = msg.enum_type.add(name=enum_name)
            for value_name, number in values.items():
                enum.value.add(name=value_name, number=number)
        for label, type_, fname, number, default in fields:
            f = msg.field.add(name=fname, number=number,
                              label=_F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL)
            if type_ in _SCALARS:
                f.type = _SCALARS[type_]
            elif "." in type_:
                f.type, f.type_name = _F.TYPE_ENUM, f".caffe.{type_}"
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".caffe.{type_}"
            if default is not None:
                f.default_value = default
            if (name, fname) in _PACKED:
                f.options.packed = True
    return fd


_CLASSES: dict[str, Any] = {}


def message(name: str) -> Any:
    """The message class ``caffe.<name>`` of the subset (NetParameter, BlobProto, ...)."""
    if not _CLASSES:
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(_file_descriptor().SerializeToString())
        for n in _MESSAGES:
            _CLASSES[n] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{n}"))
    return _CLASSES[name]


# -- reading ---------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None


def read_net(path: Path, data: bytes | None = None) -> Any:
    """A binary ``.caffemodel`` (its bytes ``data``, read from ``path`` if not given) as a NetParameter."""
    data = _read_bytes(path) if data is None else data
    net = message("NetParameter")()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: not a caffemodel (protobuf cannot parse it as a Caffe NetParameter: "
                        f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if not (len(net.layer) or len(net.layers)):
        raise UserError(f"{path}: not a caffemodel (no layers in it)")
    return net


def read_deploy(path: Path) -> Any:
    """A text ``deploy.prototxt`` as a NetParameter (the fields outside the subset skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as a text prototxt ({getattr(e, 'strerror', None) or e})") from None
    net = message("NetParameter")()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as e:
        raise UserError(f"{path}: not a Caffe prototxt ({str(e).splitlines()[0][:160]})") from None
    if not (len(net.layer) or len(net.layers)):
        raise UserError(f"{path}: not a Caffe net definition (no layers in it)")
    return net


@dataclass
class Layer:
    """One layer in the current format's terms, whichever format the file used."""

    name: str
    type: str
    msg: Any
    blobs: list[Any] = field(default_factory=list)


def layers(net: Any) -> list[Layer]:
    """The net's layers in order, V1 types renamed as the current format spells them."""
    if len(net.layer):
        return [Layer(m.name, m.type, m, list(m.blobs)) for m in net.layer]
    names = {v: k for k, v in V1_TYPES.items()}
    out = []
    for m in net.layers:
        v1 = names.get(m.type, str(m.type))
        out.append(Layer(m.name, _V1_NAMES.get(v1, v1), m, list(m.blobs)))
    return out


def blob_array(blob: Any, where: str) -> np.ndarray:
    """A blob's values with its shape (``shape.dim``, or the legacy num × channels × height × width)."""
    dims = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if values.size != int(np.prod(dims, dtype=np.int64)):
        raise UserError(f"{where}: a blob of shape {'×'.join(map(str, dims))} holds {values.size} values")
    return values.reshape(dims)


def _squeeze_leading(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def _one(values: Any, name: str, where: str, default: int | None = None) -> int:
    vals = list(values)
    if not vals:
        if default is None:
            raise UserError(f"{where}: no {name}")
        return default
    if any(v != vals[0] for v in vals):
        raise UserError(f"{where}: {name} differs between height and width ({vals}); AlexNet's are square")
    return int(vals[0])


def _conv(layer: Layer, where: str) -> dict[str, int]:
    p = layer.msg.convolution_param
    if p.HasField("kernel_h") or p.HasField("stride_h") or p.HasField("pad_h") or any(d != 1 for d in p.dilation):
        hw = [(p.kernel_h, p.kernel_w), (p.stride_h, p.stride_w), (p.pad_h, p.pad_w)]
        if any(a != b for a, b in hw if a or b) or any(d != 1 for d in p.dilation):
            raise UserError(f"{where}: a non-square or dilated convolution; AlexNet's are square and plain")
    kernel = int(p.kernel_h) if p.HasField("kernel_h") else _one(p.kernel_size, "kernel_size", where)
    stride = int(p.stride_h) if p.HasField("stride_h") else _one(p.stride, "stride", where, 1)
    pad = int(p.pad_h) if p.HasField("pad_h") else _one(p.pad, "pad", where, 0)
    if not p.bias_term:
        raise UserError(f"{where}: a convolution without bias; AlexNet's have biases")
    return {"out": int(p.num_output), "kernel": kernel, "stride": stride, "pad": pad, "group": int(p.group)}


def _pool(layer: Layer, where: str) -> tuple[int, int]:
    p = layer.msg.pooling_param
    if p.pool != 0 or p.global_pooling:
        raise UserError(f"{where}: not max-pooling; AlexNet max-pools (§3.4)")
    if (p.pad or p.pad_h or p.pad_w) or p.round_mode != 0:
        raise UserError(f"{where}: padded or floor-rounded pooling; Caffe's AlexNet pools unpadded, rounding up")
    kernel = int(p.kernel_h) if p.HasField("kernel_h") else int(p.kernel_size)
    stride = int(p.stride_h) if p.HasField("stride_h") else int(p.stride)
    return kernel, stride


# What an AlexNet is, layer by layer: C conv, R ReLU, N LRN, P max-pool, F inner product.
_SHAPES = {"CRNPCRNPCRCRCRPFRFRF": False, "CRPNCRPNCRCRCRPFRFRF": True}  # -> lrn_after_pool (CaffeNet)
_LETTERS = {"Convolution": "C", "ReLU": "R", "LRN": "N", "Pooling": "P", "InnerProduct": "F"}
# Layers that do not compute the network's outputs: data, loss, accuracy, softmax, dropout, ...
_IGNORED = {"Data", "ImageData", "Input", "DummyData", "MemoryData", "HDF5Data", "WindowData", "Accuracy", "Softmax",
            "SoftmaxWithLoss", "Silence", "Split", "Dropout", "DATA", "IMAGE_DATA", "DUMMY_DATA", "MEMORY_DATA",
            "HDF5_DATA", "WINDOW_DATA", "ACCURACY", "SOFTMAX", "SOFTMAX_LOSS", "SILENCE", "SPLIT", "Flatten", "FLATTEN"}


@dataclass
class Imported:
    model: nn.Module
    meta: dict[str, Any]
    stats: dict[str, torch.Tensor]
    summary: dict[str, Any]


def _input_size(net: Any) -> int | None:
    """The crop size the net definition declares (input_shape, input_dim or an Input layer)."""
    shapes = [list(s.dim) for s in net.input_shape]
    if not shapes and len(net.input_dim) >= 4:
        shapes = [list(net.input_dim)[:4]]
    for m in net.layer:
        if m.type == "Input" and len(m.input_param.shape):
            shapes.append(list(m.input_param.shape[0].dim))
    if not shapes:
        return None
    h, w = shapes[0][-2:]
    if h != w:
        raise UserError(f"the net's input is {h}×{w}; AlexNet's crops are square")
    return int(h)


def structure(defn: Any, where: str) -> tuple[dict[str, Any], list[Layer]]:
    """AlexNet's options for a Caffe net definition, and its weight layers (conv1..5, fc6..8) in
    order; a net that is not an AlexNet is refused in one line naming what differs."""
    kept = [lay for lay in layers(defn) if lay.type not in _IGNORED]
    unknown = [lay for lay in kept if lay.type not in _LETTERS]
    if unknown:
        raise UserError(f"{where}: not an AlexNet (layer {unknown[0].name!r} is a {unknown[0].type}, which AlexNet has not)")
    shape = "".join(_LETTERS[lay.type] for lay in kept)
    if shape not in _SHAPES:
        raise UserError(f"{where}: not an AlexNet (its layers read {shape}; AlexNet's {next(iter(_SHAPES))}: "
                        f"C conv, R ReLU, N LRN, P pool, F inner product)")
    for lay in kept:
        if lay.type == "ReLU" and lay.msg.relu_param.negative_slope != 0:
            raise UserError(f"{where}: layer {lay.name!r} is a leaky ReLU (slope {lay.msg.relu_param.negative_slope}); "
                            f"AlexNet's is plain (§3.1)")
    convs = [lay for lay in kept if lay.type == "Convolution"]
    fcs = [lay for lay in kept if lay.type == "InnerProduct"]
    specs = [_conv(c, f"{where}: layer {c.name!r}") for c in convs]
    expected = [(11, 4, None), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]  # kernel, stride, pad (Figure 2)
    for c, s, (k, st, pad) in zip(convs, specs, expected):
        if (s["kernel"], s["stride"]) != (k, st) or (pad is not None and s["pad"] != pad):
            raise UserError(f"{where}: layer {c.name!r} is a {s['kernel']}×{s['kernel']} convolution, stride {s['stride']}, "
                            f"pad {s['pad']}; AlexNet's is {k}×{k}, stride {st}" + (f", pad {pad}" if pad is not None else ""))
    groups = [s["group"] for s in specs]
    if groups not in ([1, 2, 1, 2, 2], [1, 1, 1, 1, 1]):
        raise UserError(f"{where}: convolution groups {groups}; AlexNet's are 1, 2, 1, 2, 2 (two towers, §3.2) or all 1")
    pools = {_pool(p, f"{where}: layer {p.name!r}") for p in kept if p.type == "Pooling"}
    if pools != {(3, 2)}:  # (Caffe rounds pooled sizes up: 2×2 pools would give 28, 14, 7 where ours give 27, 13, 6)
        raise UserError(f"{where}: pooling {sorted(pools)} (kernel, stride); AlexNet's is 3×3 stride 2 throughout (§3.4)")
    lrns = [lay.msg.lrn_param for lay in kept if lay.type == "LRN"]
    for lay, p in zip([lay for lay in kept if lay.type == "LRN"], lrns):
        if p.norm_region != 0 or p.local_size != PAPER_LRN["size"] or not np.isclose(p.alpha, PAPER_LRN["alpha"]) \
                or not np.isclose(p.beta, PAPER_LRN["beta"]):
            raise UserError(f"{where}: layer {lay.name!r} normalises with local_size {p.local_size}, alpha {p.alpha:g}, "
                            f"beta {p.beta:g}; AlexNet's: across channels, 5, 1e-4, 0.75 (§3.3)")
    if lrns[0].k != lrns[1].k:
        raise UserError(f"{where}: the two LRN layers have different k ({lrns[0].k:g}, {lrns[1].k:g})")
    outs = [int(f.msg.inner_product_param.num_output) for f in fcs]
    if outs[0] != outs[1]:
        raise UserError(f"{where}: fc6 and fc7 have {outs[0]} and {outs[1]} outputs; AlexNet's hidden layers are equal")
    drops = [lay.msg.dropout_param.dropout_ratio for lay in layers(defn) if lay.type in ("Dropout", "DROPOUT")]
    options: dict[str, Any] = {"conv1_padding": specs[0]["pad"], "lrn": "released", "lrn_k": float(lrns[0].k)}
    if _SHAPES[shape]:
        options["lrn_after_pool"] = True
    if groups[1] == 1:
        options["towers"] = 1
    if tuple(s["out"] for s in specs) != PAPER_WIDTHS:
        options["widths"] = [s["out"] for s in specs]
    if outs[0] != 4096:
        options["hidden"] = outs[0]
    ratio = float(drops[0]) if drops else 0.0
    if not np.isclose(ratio, 0.5):
        options["dropout"] = round(ratio, 6)
    size = _input_size(defn)
    pad = specs[0]["pad"]
    if size is None:
        size = {0: 227, 2: 224}.get(pad)
        if size is None:
            raise UserError(f"{where}: conv1 pads by {pad} and the net declares no input size; give --deploy with its input")
    options["input_size"] = size
    return {"options": options, "num_classes": outs[2]}, [*convs, *fcs]


def _state_dict(model: nn.Module, weight_layers: list[Layer], blobs_of: dict[str, list[Any]], where: str
                ) -> dict[str, torch.Tensor]:
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]  # type: ignore[attr-defined]
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]  # type: ignore[attr-defined]
    names = {id(m): n for n, m in model.named_modules()}
    sd = {}
    for lay, mod in zip(weight_layers, [*convs, *fcs]):
        blobs = blobs_of.get(lay.name)
        if not blobs:
            raise UserError(f"{where}: no weights for layer {lay.name!r}")
        if len(blobs) != 2:
            raise UserError(f"{where}: layer {lay.name!r} has {len(blobs)} blobs, expected 2 (weights, bias)")
        w, b = (blob_array(x, f"{where}: layer {lay.name!r}") for x in blobs)
        if lay.type == "InnerProduct":
            w = w.reshape(_squeeze_leading(w.shape))
            if lay.msg.inner_product_param.transpose:  # stored inputs × outputs
                w = w.T
        for got, param, what in ((w, mod.weight, "weights"), (b, mod.bias, "bias")):
            want = tuple(param.shape)
            if _squeeze_leading(tuple(got.shape)) != _squeeze_leading(want):
                raise UserError(f"{where}: layer {lay.name!r} {what} are {'×'.join(map(str, got.shape))}, "
                                f"the network's {'×'.join(map(str, want))}")
        prefix = names[id(mod)]
        sd[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(w).reshape(tuple(mod.weight.shape)))
        sd[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(b).reshape(tuple(mod.bias.shape)))
    return sd


# Caffe's per-channel ImageNet mean, B, G, R (the value of ilsvrc_2012_mean.npy's channels, rounded,
# as Caffe's own examples give it), used when no mean image is given.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGE_SIZE = 256  # Caffe's ImageNet images: resized to 256×256, crops cut from them


def read_mean(path: Path | None) -> tuple[np.ndarray, str]:
    """Caffe's mean (BGR, 3×H×W, 0–255) from ``ilsvrc_2012_mean.npy`` or a ``.binaryproto``
    BlobProto (``imagenet_mean.binaryproto``); without a file, the per-channel mean at 256×256."""
    if path is None:
        mean = np.broadcast_to(np.array(CAFFE_MEAN_BGR, np.float32)[:, None, None], (3, IMAGE_SIZE, IMAGE_SIZE))
        return np.ascontiguousarray(mean), "per-channel (B, G, R) = (104, 117, 123)"
    path = Path(path)
    if path.suffix == ".npy":
        try:
            mean = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a NumPy mean image ({str(e).splitlines()[0][:120]})") from None
    else:
        blob = message("BlobProto")()
        try:
            blob.ParseFromString(_read_bytes(path))
        except (DecodeError, RuntimeError, ValueError):
            raise UserError(f"{path}: not a Caffe mean (.npy or .binaryproto BlobProto)") from None
        mean = blob_array(blob, str(path))
    mean = np.asarray(mean, np.float32)
    mean = mean.reshape(_squeeze_leading(mean.shape))
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise UserError(f"{path}: a mean of shape {'×'.join(map(str, mean.shape))}; expected 3×H×W (BGR)")
    if not np.isfinite(mean).all():
        raise UserError(f"{path}: the mean holds non-finite values")
    return mean, path.name


def read_synsets(path: Path, num_classes: int) -> tuple[list[str], list[str]]:
    """Caffe's ``synset_words.txt`` (``n01440764 tench, Tinca tinca``, one class a line, in the
    order of the network's outputs): (WNIDs, names)."""
    from alexnet.data.sources.base import WNID_RE

    try:
        lines = [s.strip() for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    wnids = [s.split(maxsplit=1)[0] for s in lines]
    names = [(s.split(maxsplit=1)[1] if " " in s else s.split()[0]).split(",")[0].strip() for s in lines]
    bad = next((w for w in wnids if not WNID_RE.match(w)), None)
    if bad is not None:
        raise UserError(f"{path}: {bad!r} is not a WNID; expected lines like 'n01440764 tench, Tinca tinca'")
    if len(wnids) != num_classes:
        raise UserError(f"{path}: lists {len(wnids)} classes, the network has {num_classes} outputs")
    return wnids, names


def import_caffe(caffemodel: Path, deploy: Path | None = None, mean: Path | None = None,
                 synsets: Path | None = None) -> Imported:
    """The network, the weights' metadata and the mean (as this project stores statistics) of a
    Caffe AlexNet; see the module docstring."""
    caffemodel = Path(caffemodel)
    data = _read_bytes(caffemodel)
    digest = hashlib.sha256(data).hexdigest()
    net = read_net(caffemodel, data)
    del data  # the parsed message holds the values: not twice the file in memory
    defn = read_deploy(deploy) if deploy is not None else net
    arch, weight_layers = structure(defn, str(deploy or caffemodel))
    blobs_of = {lay.name: lay.blobs for lay in layers(net) if lay.blobs}
    try:
        model = models.create("alexnet", arch["num_classes"], **arch["options"])
    except ValueError as e:
        raise UserError(f"{caffemodel}: {e}") from None
    sd = _state_dict(model, weight_layers, blobs_of, str(caffemodel))
    model.load_state_dict(sd)
    mean_bgr, mean_from = read_mean(mean)
    size = arch["options"]["input_size"]
    if mean_bgr.shape[1] < size or mean_bgr.shape[2] < size:
        raise UserError(f"{mean}: the mean image is {mean_bgr.shape[1]}×{mean_bgr.shape[2]}, smaller than the {size}×{size} crops")
    n = arch["num_classes"]
    if synsets is not None:
        classes, names = read_synsets(synsets, n)
    elif n == 1000:
        from alexnet.engine.torchvision_weights import imagenet_categories

        # Caffe's outputs are ILSVRC-2012's classes in sorted-WNID order (its synsets.txt), torchvision's too.
        classes = names = imagenet_categories()
    else:
        classes = names = [str(i) for i in range(n)]
    meta = {
        "model": "alexnet",
        "model_options": arch["options"],
        "num_classes": n,
        "classes": classes,
        "class_names": names,
        "input_size": size,
        "input_norm": "mean_image",
        "channel_order": "bgr",  # Caffe's networks read B, G, R
        "input_mean": "weights",  # the mean Caffe trained with, stored with the weights, not a dataset's
        "image_size": [int(mean_bgr.shape[1]), int(mean_bgr.shape[2])],
        "data": None,
        "source": "caffe",
        "caffe": {"file": caffemodel.name, "sha256": digest, "net": defn.name or None,
                  "format": "layer" if len(net.layer) else "layers (V1)", "deploy": Path(deploy).name if deploy else None,
                  "mean": mean_from},
    }
    rgb = torch.from_numpy(np.ascontiguousarray(mean_bgr[::-1]))  # stored as RGB, as every mean image here
    stats = {"mean": rgb, "eigval": torch.zeros(3), "eigvec": torch.eye(3)}
    summary = {"layers": [lay.name for lay in weight_layers], **{k: meta[k] for k in ("model_options", "num_classes")},
               **meta["caffe"]}
    return Imported(model.eval(), meta, stats, summary)
