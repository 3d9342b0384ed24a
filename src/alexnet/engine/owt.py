"""Krizhevsky's "one weird trick" (2014): data parallelism in the convolutional layers, model
parallelism in the fully connected ones (``alexnet train --set parallel=owt`` under torchrun).

The convolutional trunk holds ~4% of AlexNet's parameters and ~90% of its arithmetic; the three
FC layers hold the other 96% of the parameters (58.6M of 61M) and little arithmetic. Plain DDP
all-reduces every gradient, so the FC layers' 234 MB of fp32 gradients cross the network each
step whatever the batch size. Here every process runs the trunk on its slice of the global
batch (DDP, which all-reduces only the trunk's gradients) and then the processes exchange the
*activations* of the last convolutional layer: each one sees the whole global batch and computes
1/K of every FC layer's units. The traffic then scales with the batch, not with the FC weights.

The FC layers are placed with torch.distributed's tensor parallelism (``parallelize_module`` on a
one-dimensional :class:`~torch.distributed.device_mesh.DeviceMesh`), with layouts chosen so that
every activation between two FC layers is partitioned across the processes, never replicated::

    trunk (DDP)   this process's B/K images → pool5: B/K × 9216
    fc6  Colwise  all-gather of the batch (B × 9216) → units 1/K: B × 4096/K → ReLU, dropout
    fc7  Rowwise  partial sums, reduce-scattered over the batch → B/K × 4096 → ReLU, dropout
    fc8  Colwise  all-gather of the batch (B × 4096) → classes 1/K: B × C/K, all-to-all → B/K × C

(a classifier with one FC layer, ``alexnet-cifar``, is the last line alone; a last layer whose
classes do not split evenly stays data-parallel, its gradients all-reduced by DDP with the
trunk's, see :func:`plan`). Each process ends
with the logits of its own B/K images, so the loss, the hit count and the training loop are those
of DDP. Partitioned activations mean dropout masks are drawn by the one process that owns the
units or the images (its own generator, as in DDP), so no two processes need to agree on a mask.

Gradients: each process's loss is the mean over its own B/K images, and the tensor-parallel
backward sums the K losses' gradients into the FC shards, where DDP averages the trunk's; a hook
divides the FC shards' gradients by K, so the step equals one process's step on the whole batch.

Checkpoints and weights files hold full tensors in the single-process layout
(:func:`alexnet.engine.checkpoint.model_state_dict` gathers the shards: a collective), so a run
resumes at any world size that divides its FC layers, or with ``parallel=ddp``, or on one process.

Evaluation runs on :func:`eval_replica`, an unsharded copy refreshed from the shards before each
evaluation: the processes evaluate different numbers of images, and a forward with collectives
in it would wait for peers that have none left.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from alexnet.engine import checkpoint as ckpt

__all__ = ["eval_replica", "fc_layers", "parallelize", "plan", "refresh", "sharded_parameters"]


def fc_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The FC layers of ``model.classifier`` (a Sequential), as (name inside it, layer)."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Sequential):
        raise ValueError(f"parallel=owt splits a model's classifier Sequential; {type(model).__name__} has none")
    fcs = [(name, m) for name, m in classifier.named_children() if isinstance(m, nn.Linear)]
    if not fcs:
        raise ValueError(f"parallel=owt: {type(model).__name__}'s classifier has no Linear layer")
    return fcs


def plan(model: nn.Module, world_size: int) -> dict[str, ParallelStyle]:
    """The tensor-parallel plan of ``model.classifier`` over ``world_size`` processes: FC layers
    alternate column-wise (each process: 1/K of the output units, for the whole batch) and
    row-wise (1/K of the inputs, partial sums reduce-scattered back to each process's images); the
    last one hands each process the logits of its own images. Between two FC layers an activation
    is sharded by units (after a column-wise layer) or by images (after a row-wise one): never
    replicated. A last column-wise layer whose outputs do not split evenly (1000 classes over 16
    processes) stays out of the plan, data-parallel: after a row-wise layer its input is already
    this process's images, and DDP all-reduces its gradients with the trunk's. Any other split
    dimension that does not divide is a ``ValueError`` naming the layer (DTensor's uneven shards do
    not carry through the row-wise matmul)."""
    fcs = fc_layers(model)
    styles: dict[str, ParallelStyle] = {}
    for i, (name, fc) in enumerate(fcs):
        last = i == len(fcs) - 1
        dim, what = (fc.out_features, "outputs") if i % 2 == 0 else (fc.in_features, "inputs")
        if dim % world_size:
            if last and i % 2 == 0 and i > 0:
                break  # data-parallel, see above
            raise ValueError(f"FC layer classifier.{name} has {dim} {what}, not divisible by {world_size} processes")
        if i % 2 == 0:  # input: this process's images; gathered to the whole batch
            styles[name] = ColwiseParallel(input_layouts=Shard(0), output_layouts=Shard(0) if last else Shard(-1))
        else:  # input: this process's units; output: the summed result for this process's images
            styles[name] = RowwiseParallel(input_layouts=Shard(-1), output_layouts=Shard(0))
    return styles


def sharded_parameters(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters that are DTensor shards (the FC layers under owt)."""
    return [n for n, p in ckpt.unwrap(model).named_parameters() if isinstance(p, DTensor)]


def parallelize(model: nn.Module, device: torch.device, world_size: int) -> tuple[nn.Module, DeviceMesh]:
    """``model`` with its classifier placed by :func:`plan` on a mesh of the ``world_size``
    processes and its trunk wrapped in DDP (which ignores the FC shards: they are never
    all-reduced); returns (the DDP-wrapped model, the mesh). Every process calls it with the same
    initial weights (rank 0's are broadcast to the trunk by DDP; the shards are cut from each
    process's own full copy, identical for a given seed)."""
    styles = plan(model, world_size)
    mesh = init_device_mesh(device.type, (world_size,))
    for m in model.classifier.modules():  # type: ignore[union-attr]
        if getattr(m, "inplace", False):
            # A layer's local output is a view made by DTensor's to_local, which autograd forbids
            # modifying in place (an in-place ReLU); out of place, the numbers are the same.
            m.inplace = False
    parallelize_module(model.classifier, mesh, styles)  # type: ignore[arg-type]
    names = sharded_parameters(model)
    scale = 1.0 / world_size
    for n, p in model.named_parameters():
        if n in names:
            # Each process's loss is the mean over its B/K images and the backward sums the K
            # losses' gradients into the shard: divided by K, the mean over the whole batch.
            p.register_hook(_scaled(scale))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids), mesh


def _scaled(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda g: g * factor


def eval_replica(model: nn.Module) -> nn.Module:
    """An unsharded copy of ``model`` (taken before :func:`parallelize`): what evaluates, after
    :func:`refresh`."""
    return copy.deepcopy(model)


@torch.no_grad()
def refresh(replica: nn.Module, model: nn.Module) -> None:
    """The trained weights copied into ``replica``, the shards gathered (a collective: every
    process calls it at the same point)."""
    sd = ckpt.model_state_dict(model)
    ckpt.unwrap(replica).load_state_dict(sd)
