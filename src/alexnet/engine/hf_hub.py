"""Publishing weights on the Hugging Face Hub, through ``huggingface_hub``'s ``PyTorchModelHubMixin``.

:class:`Pretrained` wraps one of :mod:`alexnet.models` (``.net``, unchanged) with the mixin's
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``. The folder it writes holds:

* ``model.safetensors``: the network's state_dict with its usual keys, the training set's
  statistics (§2's mean image, §4.1's RGB eigenvectors) and the metadata every ``alexnet`` command
  reads (model, options, classes, sizes, the recipe, the metrics, the git commit): the same format
  as a run's ``model.safetensors``, so ``alexnet predict FOLDER image.jpg`` works on it;
* ``config.json``: what rebuilds the model (``model``, ``num_classes``, ``model_options``, ``meta``);
* ``README.md``: a model card in the Hub's format: YAML front matter (``library_name``, ``tags``,
  ``license``, ``datasets`` where the training data is a known Hub dataset, ``model-index`` with the
  results of ``eval.json``), then the architecture with its parameters and GFLOPs per image, the
  data, the recipe, the metrics, an install line that works from the card alone (the package from
  its git repository, at the commit that trained the weights), the licence (the code's MIT, and
  ImageNet's terms of access for weights trained on it), the paper's citation and the git commit.

``huggingface_hub`` is an optional dependency (``pip install 'alexnet[hub]'``); this module imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from torch import nn

from alexnet import SOURCE_URL, models
from alexnet.data.sources.base import WNID_RE
from alexnet.data.sources.idx import FASHION_NAMES
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import run_folder
from alexnet.errors import UserError

PAPER_URL = "https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks"
CITATION = """@inproceedings{krizhevsky2012imagenet,
  title     = {ImageNet Classification with Deep Convolutional Neural Networks},
  author    = {Krizhevsky, Alex and Sutskever, Ilya and Hinton, Geoffrey E.},
  booktitle = {Advances in Neural Information Processing Systems 25 (NIPS 2012)},
  pages     = {1097--1105},
  year      = {2012}
}"""
ARCHITECTURES = {
    "alexnet": "the 2012 network as the paper describes it (§3, Figure 2): five convolutional layers (96, 256, 384, "
               "384, 256 kernels) in two towers, ReLU, local response normalisation after conv1 and conv2 (§3.3), "
               "overlapping 3×3/2 max-pooling (§3.4), three fully connected layers (4096, 4096, classes) with "
               "dropout 0.5 (§4.2); 224×224 input",
    "alexnet-owt": "Krizhevsky's 2014 one-weird-trick network, laid out as torchvision.models.alexnet: one tower, "
                   "64-192-384-256-256 kernels, no LRN; 224×224 input",
    "alexnet-cifar": "the authors' CIFAR-10 network family: three 5×5 convolutional layers (32, 32, 64 kernels) "
                     "with LRN and overlapping pooling, one fully connected layer; 32×32 input",
    "lenet5": "LeNet-5 (LeCun et al. 1998) on 32×32 RGB, the pre-2012 baseline",
}
NORMS = {"mean_image": "raw 0–255 RGB minus the training set's per-pixel mean image (§2)",
         "mean_image_std": "RGB minus the training set's per-pixel mean image, divided by its pixel standard deviation",
         "mean_std": "torchvision's per-channel ImageNet mean and standard deviation"}

# Hub dataset ids of the training data this package prepares, where the card can tell it (datasets:).
IMAGENET_ID = "imagenet-1k"
IMAGENET_TERMS = "https://image-net.org/download.php"
HUB_DATASETS = {"imagenet-1k": "ILSVRC-2012 (ImageNet-1k)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                "fashion_mnist": "Fashion-MNIST"}

CARD = """---
{{ card_data }}
---

# {{ title }}

A network of the family of **AlexNet** (Krizhevsky, Sutskever & Hinton, *ImageNet Classification with
Deep Convolutional Neural Networks*, NIPS 2012), trained with the `alexnet` package, a reference PyTorch
implementation of that paper.

## Architecture

`{{ model }}`{{ options }}: {{ architecture }}. {{ parameters }} parameters, {{ num_classes }} classes;
{{ gflops }} GFLOPs per image (one forward pass of a {{ input_size }}×{{ input_size }} crop, a multiply-add
counted as 2 FLOPs, by `torch.utils.flop_counter`; the 10-crop test costs ten times that).

## Data

{{ data }}

Input: {{ input }}. The training set's statistics (mean image, RGB eigenvectors) are stored in
`model.safetensors` beside the weights (tensors `_data_stats.*`).

## Training recipe

{{ recipe }}

## Metrics

{{ metrics }}

## Use

The code: {{ code_url }}. The package is not on PyPI; install it from its repository{{ at_commit }}:

```bash
pip install "alexnet[hub] @ git+{{ code_url }}{{ pin }}"
```

```python
from alexnet.engine.hf_hub import Pretrained
m = Pretrained.from_pretrained("{{ repo_id }}")    # m.net is the network, m.meta its classes and sizes
```

or, with the files downloaded: `alexnet predict FOLDER photo.jpg`, `alexnet export FOLDER --format onnx`.

## Licence

{{ licence }}

## Provenance

{{ provenance }}

## Citation

```bibtex
{{ citation }}
```
"""


class Pretrained(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="alexnet",
    license="mit",
    pipeline_tag="image-classification",
    tags=["alexnet", "image-classification", "cnn"],
    paper_url=PAPER_URL,
    model_card_template=CARD,
):
    """One of :mod:`alexnet.models` (``.net``; its state_dict keys unchanged) with its metadata
    (``.meta``) and training-set statistics (``.data_stats``), and the Hub mixin's methods."""

    def __init__(self, model: str = "alexnet", num_classes: int = 1000, model_options: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = models.create(model, num_classes, **(model_options or {}))
        self.meta: dict[str, Any] = {**(meta or {}), "model": model, "num_classes": num_classes,
                                     "model_options": dict(model_options or {})}
        self.data_stats: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @classmethod
    def from_trained(cls, trained: Any, evaluation: dict[str, Any] | None = None) -> "Pretrained":
        """From :func:`alexnet.engine.inference.load`'s result; ``evaluation``: the run's eval.json."""
        meta = dict(trained.meta)
        if evaluation:
            meta["eval"] = evaluation
        obj = cls(meta["model"], int(meta["num_classes"]), meta.get("model_options") or {}, meta)
        obj.net.load_state_dict(trained.model.state_dict())
        obj.data_stats = trained.stats
        return obj.eval()

    # -- the mixin's hooks ------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        ckpt.save_weights(self.net, Path(save_directory) / ckpt.WEIGHTS, self.meta, self.data_stats)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", **model_kwargs: Any) -> "Pretrained":
        if os.path.isdir(model_id):
            path = Path(model_id) / ckpt.WEIGHTS
        else:
            path = Path(hf_hub_download(repo_id=model_id, filename=ckpt.WEIGHTS, revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, token=token, local_files_only=local_files_only))
        sd, stats, meta = ckpt.read_model_weights(path)
        obj = cls(meta["model"], int(meta["num_classes"]), meta.get("model_options") or {}, meta)
        obj.net.load_state_dict(sd)  # strict: every key present, no stray ones
        obj.data_stats = stats
        return obj.to(map_location).eval()

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        from huggingface_hub import ModelCard

        fields = {**card_fields(self), **kwargs}
        return ModelCard.from_template(card_data(self, fields["title"]), template_str=CARD, **fields)


# -- the model card ---------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return f"{100 * float(x):.2f}%" if isinstance(x, (int, float)) else "—"


def dataset_id(meta: dict[str, Any]) -> str | None:
    """The Hub id of the training data, where the weights tell it: ImageNet-1k for torchvision's and
    Caffe's weights and for 1000 WNID classes; CIFAR-10/100 and Fashion-MNIST by the source the
    dataset was prepared from and its classes. None otherwise (the built-in data, image folders)."""
    classes = [str(c) for c in meta.get("classes") or []]
    if meta.get("source") in ("torchvision", "caffe"):
        return IMAGENET_ID
    if len(classes) == 1000 and all(WNID_RE.fullmatch(c) for c in classes):
        return IMAGENET_ID
    if list(meta.get("class_names") or []) == FASHION_NAMES:
        return "fashion_mnist"
    kind = source_kind(meta)
    if kind == "cifar" and len(classes) in (10, 100):
        return f"cifar{len(classes)}"
    return None


def source_kind(meta: dict[str, Any]) -> str | None:
    """What the training set was prepared from (its meta.json's ``source.kind``: ``synthetic``,
    ``cifar``, ``idx``, ``imagenet``, ``folder``), where the dataset can still be read."""
    if meta.get("data") == "synthetic":
        return "synthetic"
    if not meta.get("data"):
        return None
    try:
        from alexnet.data.format import read_meta

        source = read_meta(Path(meta["data"])).get("source") or {}
        return source.get("kind") or source.get("type")  # the built-in data records its "type"
    except Exception:  # the dataset moved or was removed since training: the card says less
        return None


def licence(meta: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The front matter's licence keys and the card's licence text, by what the weights were trained on."""
    if dataset_id(meta) == IMAGENET_ID:
        return ({"license": "other", "license_name": "imagenet-terms-of-access", "license_link": IMAGENET_TERMS},
                "The `alexnet` code is released under the MIT licence. These weights were trained on ILSVRC-2012 "
                "(ImageNet), whose terms of access permit non-commercial research and educational use only "
                f"({IMAGENET_TERMS}); using the weights is subject to those terms.")
    if source_kind(meta) == "synthetic":
        return {"license": "mit"}, ("The `alexnet` code and these weights, trained on the built-in synthetic data "
                                    "that the package generates, are released under the MIT licence.")
    return {"license": "mit"}, ("The `alexnet` code and these weights are released under the MIT licence; the terms "
                                "of the training data (above) may also apply to weights trained on it.")


def card_data(m: Pretrained, title: str) -> Any:
    """The card's YAML front matter: the Hub's keys, ``datasets`` where known and ``model-index``
    from eval.json (top-1 and top-5 accuracy in %, centre crop and 10-crop, on the validation split)."""
    from huggingface_hub import EvalResult, ModelCardData

    meta = m.meta
    ds = dataset_id(meta)
    evaluation = meta.get("eval") or {}
    results = []
    for key, label in (("center", "centre crop"), ("ten_crop", "10-crop")):
        e = evaluation.get(key) or {}
        for metric, name, err in (("accuracy", "top-1 accuracy", "top1_err"), ("top-5-accuracy", "top-5 accuracy", "top5_err")):
            if isinstance(e.get(err), (int, float)):
                results.append(EvalResult(
                    task_type="image-classification", task_name="Image classification",
                    dataset_type=ds or "custom", dataset_name=HUB_DATASETS.get(ds or "", str(meta.get("data") or "custom")),
                    dataset_split="validation", metric_type=metric, metric_name=f"{name}, {label} (%)",
                    metric_value=round(100 * (1 - float(e[err])), 2)))
    keys, _ = licence(meta)
    return ModelCardData(library_name="alexnet", pipeline_tag="image-classification",
                         tags=["alexnet", "image-classification", "cnn", "pytorch", str(meta.get("model"))],
                         datasets=[ds] if ds else None, model_name=title if results else None,
                         eval_results=results or None, **keys)


def card_fields(m: Pretrained) -> dict[str, Any]:
    meta = m.meta
    name = meta["model"]
    opts = meta.get("model_options") or {}
    recipe = meta.get("recipe") or {}
    metrics = meta.get("metrics") or {}
    evaluation = meta.get("eval") or {}
    rows = []
    for key, label in (("center", "centre crop"), ("ten_crop", "10-crop (§4.1)")):
        if key in evaluation:
            e = evaluation[key]
            rows.append(f"| validation, {label} | {_pct(e.get('top1_err'))} | {_pct(e.get('top5_err'))} | {e.get('n', '—')} |")
    if metrics.get("val_top1_err") is not None:
        crop = "10-crop" if recipe.get("ten_crop") else "centre crop"
        rows.append(f"| validation after the last epoch ({metrics.get('epoch', '?')}), {crop} | "
                    f"{_pct(metrics.get('val_top1_err'))} | {_pct(metrics.get('val_top5_err'))} | "
                    f"{metrics.get('val_images', '—')} |")
    if metrics.get("train_top1_err") is not None:
        rows.append(f"| training, last epoch (with augmentation) | {_pct(metrics.get('train_top1_err'))} | — | "
                    f"{metrics.get('train_images', '—')} |")
    table = ("| evaluation | top-1 error | top-5 error | images |\n|---|--:|--:|--:|\n" + "\n".join(rows)) if rows else \
        "No evaluation recorded with these weights."
    if recipe:
        keys = ("recipe", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "label_smoothing",
                "random_crop", "flip", "pca_std", "amp", "seed")
        listed = ", ".join(f"`{k}={recipe[k]}`" for k in keys if k in recipe)
        recipe_text = (f"{listed}. The full resolved configuration is in `model.safetensors`' metadata "
                       f"(`alexnet.recipe`).")
    else:
        recipe_text = "Not recorded (weights imported from another source)." if meta.get("source") else "Not recorded."
    if meta.get("source") == "torchvision":
        data = "ILSVRC-2012 (ImageNet), as trained by torchvision; classes in sorted-WNID order."
    elif meta.get("source") == "caffe":
        data = (f"ILSVRC-2012 (ImageNet), as trained by Caffe (`{(meta.get('caffe') or {}).get('file')}`, imported with "
                f"`alexnet import caffe`); classes in sorted-WNID order.")
    else:
        n = len(meta.get("classes") or [])
        where = f"`{meta['data']}`" if meta.get("data") else "The training set (not recorded)"
        data = (f"{where}: {n} classes ({', '.join(map(str, (meta.get('class_names') or [])[:10]))}"
                f"{', …' if n > 10 else ''}).")
    if dataset_id(meta) and not meta.get("source"):
        data += f" Hub dataset: `{dataset_id(meta)}`."
    size = meta.get("image_size") or ["?", "?"]
    prov = [f"code {SOURCE_URL}", f"git commit `{meta['git_sha']}`" if meta.get("git_sha") else "git commit not recorded",
            f"alexnet {meta['alexnet_version']}" if meta.get("alexnet_version") else None,
            f"torch {meta['torch_version']}" if meta.get("torch_version") else None]
    return {
        "title": f"{name} ({meta.get('num_classes')} classes)",
        "model": name,
        "options": (" with " + ", ".join(f"`{k}={v}`" for k, v in opts.items())) if opts else "",
        "architecture": ARCHITECTURES.get(name, name).replace("224×224 input", f"{meta.get('input_size', 224)}×"
                                                              f"{meta.get('input_size', 224)} input"),
        "parameters": f"{sum(p.numel() for p in m.net.parameters()):,}",
        "gflops": f"{gflops(name, int(meta.get('num_classes') or 1000), opts, int(meta.get('input_size') or 224)):.3f}",
        "input_size": meta.get("input_size", 224),
        "code_url": SOURCE_URL,
        "pin": f"@{meta['git_sha']}" if meta.get("git_sha") else "",
        "at_commit": f" at the commit that trained these weights (`{meta['git_sha'][:12]}`)" if meta.get("git_sha") else "",
        "licence": licence(meta)[1],
        "num_classes": meta.get("num_classes"),
        "data": data,
        "input": (f"{meta.get('input_size')}×{meta.get('input_size')} crops of images stored at {size[0]}×{size[-1]}, "
                  + (f"{NORMS.get(meta.get('input_norm', ''), meta.get('input_norm'))}" if meta.get("channel_order") != "bgr"
                     else "raw 0–255 values minus Caffe's mean image, channels in BGR order (Caffe's)")),
        "recipe": recipe_text,
        "metrics": table,
        "provenance": ", ".join(p for p in prov if p) + ".",
        "citation": CITATION,
        "repo_id": "path/to/this/folder",
    }


def gflops(model: str, num_classes: int, options: dict[str, Any], input_size: int) -> float:
    """GFLOPs of one forward pass per image (:func:`alexnet.models.flops.flops_per_image`)."""
    from alexnet.models.flops import flops_per_image

    return flops_per_image(lambda: models.create(model, num_classes, **options), input_size, backward=False) / 1e9


# -- commands' helpers ------------------------------------------------------------------------------


def read_evaluation(source: Path) -> dict[str, Any] | None:
    """A run's eval.json (centre crop and 10-crop), if the run was evaluated: ``source`` is the run
    folder or the ``model.safetensors`` inside it (a weights file elsewhere has no evaluation)."""
    if source.is_dir():
        run = source
    elif source.name == run_folder.WEIGHTS and (source.parent / run_folder.METRICS).is_file():
        run = source.parent
    else:
        return None
    return run_folder.read_eval(run) or None


def export_folder(trained: Any, out: Path) -> Path:
    """Write the Hub folder (weights, config.json, model card) to ``out`` (new or empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose another --out")
    Pretrained.from_trained(trained, read_evaluation(Path(trained.source))).save_pretrained(out)
    return out


def push(trained: Any, repo_id: str, *, private: bool | None = None, token: str | None = None,
         commit_message: str | None = None, branch: str | None = None) -> str:
    """Upload the Hub folder of ``trained`` to the model repository ``repo_id`` (created if
    missing) with the mixin's ``push_to_hub``; returns the commit's URL. Errors from the Hub (no
    token, no permission, no network, a bad name) are one :class:`UserError` line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"{repo_id}: not a valid Hub repository id ({str(e).splitlines()[0][:200]})") from None
    m = Pretrained.from_trained(trained, read_evaluation(Path(trained.source)))
    try:
        url = m.push_to_hub(repo_id, private=private, token=token, branch=branch,
                            commit_message=commit_message or f"alexnet: {m.meta['model']} weights, model card and config",
                            model_card_kwargs={"repo_id": repo_id})
    except Exception as e:  # the Hub client raises HTTP, token, validation and connection errors of many types
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(f"{repo_id}: upload failed ({type(e).__name__}: {first})") from None
    return str(url)
