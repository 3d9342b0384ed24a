"""torch.hub entry points: ``torch.hub.load("OWNER/alexnet", "alexnet", weights=...)``, or from a
checkout, ``torch.hub.load("path/to/alexnet", "alexnet", source="local")``.

Each entry point takes ``num_classes``, the model's options (those of ``alexnet.models.create``:
``lrn``, ``towers``, ``dropout``, ...) and ``weights=``: a path or an http(s) URL to this project's
``.safetensors`` (a run's ``model.safetensors``), or for ``alexnet_owt`` torchvision's
``alexnet-owt-*.pth``. With weights, the model also carries ``model.meta`` (classes, class names,
input size and normalisation) and ``model.data_stats`` (the training set's mean image, which the
paper's network subtracts from its input). See README, "torch.hub".
"""

import os as _os
import sys as _sys

dependencies = ["torch", "torchvision", "safetensors", "numpy", "yaml"]

# The package lives in src/ (a src layout): a checkout, or torch.hub's download of the repository,
# imports it from there, before any other installed copy.
_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _os.path.isdir(_os.path.join(_SRC, "alexnet")) and _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from alexnet.engine.torch_hub import build as _build  # noqa: E402


def alexnet(num_classes=None, weights=None, progress=True, **options):
    """The 2012 network exactly (two towers, LRN, overlapping pooling, dropout, the paper's init);
    60,965,224 parameters for 1000 classes (the default)."""
    return _build("alexnet", num_classes, weights=weights, progress=progress, **options)


def alexnet_owt(num_classes=None, weights=None, progress=True, **options):
    """The one-weird-trick net, laid out as ``torchvision.models.alexnet``: ``weights`` may be
    torchvision's ``alexnet-owt-7be5be79.pth`` (a path, or its URL with ``check_hash=True``)."""
    return _build("alexnet-owt", num_classes, weights=weights, progress=progress, **options)


def alexnet_cifar(num_classes=None, weights=None, progress=True, **options):
    """The authors' CIFAR-10 net (three 5×5 conv layers, LRN, overlapping pooling, one FC layer);
    32×32 input, 10 classes by default."""
    return _build("alexnet-cifar", num_classes, weights=weights, progress=progress, **options)


def lenet5(num_classes=None, weights=None, progress=True, **options):
    """LeNet-5 (LeCun 1998) on 32×32 RGB, the pre-2012 baseline; 10 classes by default."""
    return _build("lenet5", num_classes, weights=weights, progress=progress, **options)
