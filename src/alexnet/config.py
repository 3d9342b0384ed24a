"""Typed training configuration: recipes are YAML files of these fields; the CLI overrides them;
the resolved config is written into every run folder and checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from alexnet.errors import UserError, shown
from alexnet.files import atomic_write_text

RECIPE_DIR = Path(__file__).parent / "configs"

# Roles a field may declare in its metadata (``field(metadata=...)``), beside what it computes:
# "runtime": where and how fast a run ran and how it reported, not what it computed (a run may be
#   resumed with other values; experiments compare runs without them);
# "saving": how often it saved (with the runtime fields, left out of the recipe stored with the
#   weights, so that a resumed run's weights file equals an uninterrupted one's);
# "local": may differ between the processes of one torchrun job (how each reads its data and
#   whether it draws bars);
# ``auto``: the field's recipe value may be "auto": (value on a CUDA device, value elsewhere).
_RUNTIME = {"roles": ("runtime",)}
_RUNTIME_LOCAL = {"roles": ("runtime", "local")}
_SAVING = {"roles": ("saving",)}


@dataclass
class TrainConfig:
    # What to train
    model: str = "alexnet"
    model_options: dict[str, Any] = field(default_factory=dict)
    data: str = "synthetic"
    recipe: str = "paper"
    # §5: batch 128, momentum 0.9, weight decay 0.0005, eps 0.01, about 90 epochs
    epochs: int = 90
    batch_size: int = 128  # global: split across processes
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_biases: bool = False  # cuda-convnet's configs decay weights only
    optimizer: str = "paper"  # "paper": §5's update rule; "sgd": torch.optim.SGD; "nesterov"; "lars" (You et al. 2017)
    lars_eta: float = 0.001  # optimizer "lars": the trust coefficient eta of the local rate eta ||w|| / (||g|| + wd ||w||)
    label_smoothing: float = 0.0
    # Learning-rate schedule. "plateau": §5, divide by 10 when val error stops improving.
    schedule: str = "plateau"  # plateau | cosine | poly | step | constant
    plateau_patience: int = 2  # epochs without improvement before a drop
    plateau_threshold: float = 1e-3  # improvement smaller than this does not count
    # Which validation images the plateau schedule reads: "all", or "select" (the selection half,
    # every other image of each class; an experiment reports the other half, which then never
    # steers training).
    plateau_on: str = "all"
    lr_drop_factor: float = 0.1
    max_lr_drops: int = 3  # §5: "reduced three times prior to termination"
    step_epochs: list[int] = field(default_factory=list)  # for schedule "step"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    lr_scaling_batch: int = 0  # >0: linear scaling rule, lr *= batch_size / lr_scaling_batch
    # Augmentation (§4.1)
    random_crop: bool = True
    flip: bool = True
    pca_std: float = 0.1  # alpha ~ N(0, 0.1); 0 turns the colour noise off
    crop_padding: int = 0  # for datasets stored at the input size (CIFAR): pad, then crop
    # Evaluation
    eval_every: int = 1
    ten_crop: bool = False  # 10-crop in per-epoch evaluation (the final evaluation does both)
    # Engine
    seed: int = 0
    device: str = field(default="auto", metadata=_RUNTIME)  # auto | cpu | cuda | cuda:N
    workers: int = field(default=-1, metadata=_RUNTIME_LOCAL)  # -1: automatic
    decode: str = "cpu"  # cpu | cuda | auto: where JPEG records are decoded (cuda: nvJPEG; auto: split on a GPU)
    amp: str = field(default="none", metadata={"auto": ("bf16", "none")})  # none | bf16 | fp16
    channels_last: bool = field(default=False, metadata={"auto": (True, False)})
    compile: bool = field(default=False, metadata={"auto": (True, False)})
    eval_batch_size: int = field(default=0, metadata=_RUNTIME)  # 0: same as batch_size
    max_steps_per_epoch: int = 0  # >0: shorter epochs (quick runs and tests)
    train_subset: int = 0  # >0: use only the first N training images
    save_every: int = field(default=0, metadata=_SAVING)  # steps between checkpoints (0: epoch ends only)
    keep_checkpoints: int = field(default=2, metadata=_SAVING)
    stall_steps: int = 0  # >0: warn when the loss stays at chance for this many steps
    model_parallel: int = 1  # 2: §3.2's split of the towers over two devices
    # Under torchrun: "ddp" all-reduces every gradient; "owt" (Krizhevsky 2014, "one weird trick"):
    # DDP in the conv layers, the FC layers split over the processes, which exchange the last conv
    # layer's activations instead of the FC gradients (engine/owt.py)
    parallel: str = "ddp"
    ddp_comm_hook: str = "none"  # none | bf16 | fp16: gradients compressed for the all-reduce (torchrun)
    tensorboard: bool = field(default=False, metadata=_RUNTIME)
    tensorboard_every: int = field(default=50, metadata=_RUNTIME)  # with tensorboard: loss, lr and img/s every N steps (RUN/tb/steps); 0: per epoch only
    progress: bool = field(default=True, metadata=_RUNTIME_LOCAL)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{source}: unknown field {shown(unknown[0])}")
        cfg = cls(**{k: v for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every field's type and range, checked here and only here (recipes, --set, flags and
        saved configs all pass through it); the first bad field is a one-line UserError."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, check, accepted = _RULES[f.name]
            if not (_is(value, kind) and check(value)):
                raise UserError(f"{f.name}={shown(value)} is not valid; accepted: {accepted}")


def _is(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list[int]":
        return isinstance(value, list) and all(_is(v, "int") for v in value)
    if kind == "dict":
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    raise AssertionError(kind)  # pragma: no cover


def _any(value: Any) -> bool:
    return True


def _int(lo: int) -> tuple[str, Any, str]:
    return "int", lambda v: v >= lo, f"an integer ≥ {lo}"


def _choice(*options: str) -> tuple[str, Any, str]:
    return "str", lambda v: v in options, ", ".join(options)


# field -> (type, range check, what is accepted: the message's wording)
_RULES: dict[str, tuple[str, Any, str]] = {
    "model": ("str", lambda v: bool(v), "a model name"),
    "model_options": ("dict", _any, "a mapping of option names to values, e.g. {lrn: none}"),
    "data": ("str", lambda v: bool(v), "'synthetic' or a prepared dataset folder"),
    "recipe": ("str", _any, "a recipe name"),
    "epochs": _int(1),
    "batch_size": _int(1),
    "lr": ("float", lambda v: v > 0, "a number > 0"),
    "momentum": ("float", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ("float", lambda v: v >= 0, "a number ≥ 0"),
    "weight_decay_biases": ("bool", _any, "true or false"),
    "optimizer": _choice("paper", "sgd", "nesterov", "lars"),
    "lars_eta": ("float", lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.001"),
    "label_smoothing": ("float", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "schedule": _choice("plateau", "cosine", "poly", "step", "constant"),
    "plateau_patience": _int(0),
    "plateau_threshold": ("float", lambda v: v >= 0, "a number ≥ 0"),
    "plateau_on": _choice("all", "select"),
    "lr_drop_factor": ("float", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_lr_drops": _int(0),
    "step_epochs": ("list[int]", lambda v: all(e >= 1 for e in v), "a list of epochs ≥ 1, e.g. [30, 60]"),
    "warmup_epochs": ("float", lambda v: v >= 0, "a number ≥ 0"),
    "min_lr": ("float", lambda v: v >= 0, "a number ≥ 0"),
    "lr_scaling_batch": _int(0),
    "random_crop": ("bool", _any, "true or false"),
    "flip": ("bool", _any, "true or false"),
    "pca_std": ("float", lambda v: v >= 0, "a number ≥ 0"),
    "crop_padding": _int(0),
    "eval_every": _int(1),
    "ten_crop": ("bool", _any, "true or false"),
    "seed": _int(0),
    "device": ("str", lambda v: bool(v), "auto, cpu, cuda, cuda:N"),
    "workers": ("int", lambda v: v >= -1, "an integer ≥ 0, or -1 for automatic"),
    "decode": _choice("cpu", "cuda", "auto"),
    "amp": _choice("none", "bf16", "fp16"),
    "channels_last": ("bool", _any, "true or false"),
    "compile": ("bool", _any, "true or false"),
    "eval_batch_size": _int(0),
    "max_steps_per_epoch": _int(0),
    "train_subset": _int(0),
    "save_every": _int(0),
    "keep_checkpoints": _int(0),
    "stall_steps": _int(0),
    "model_parallel": ("int", lambda v: v in (1, 2), "1 or 2"),
    "parallel": _choice("ddp", "owt"),
    "ddp_comm_hook": _choice("none", "bf16", "fp16"),
    "tensorboard": ("bool", _any, "true or false"),
    "tensorboard_every": _int(0),
    "progress": ("bool", _any, "true or false"),
}
assert set(_RULES) == {f.name for f in dataclasses.fields(TrainConfig)}, "every TrainConfig field has a rule"


def fields_with_role(role: str) -> tuple[str, ...]:
    """The names of the TrainConfig fields that declare ``role`` in their metadata, in field order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if role in f.metadata.get("roles", ()))


RUNTIME_FIELDS = fields_with_role("runtime")
NOT_IN_RECIPE = (*RUNTIME_FIELDS, *fields_with_role("saving"))
LOCAL_FIELDS = fields_with_role("local")
# Fields whose recipe value may be "auto" (the fast recipe): (value on a CUDA device, value elsewhere).
AUTO_FIELDS: dict[str, tuple[Any, Any]] = {f.name: f.metadata["auto"] for f in dataclasses.fields(TrainConfig)
                                           if "auto" in f.metadata}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe by name (configs/NAME.yaml) or by path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = RECIPE_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            raise UserError(f"unknown recipe {name_or_path!r}; accepted: {', '.join(recipe_names())} or a .yaml file")
    elif not p.is_file():
        raise UserError(f"{p}: no such recipe file")
    d = read_yaml(p) or {}
    if not isinstance(d, dict):
        raise UserError(f"{p}: a recipe must be a mapping of config fields")
    d.setdefault("recipe", p.stem)
    return d


MAX_YAML_BYTES = 1 << 20  # a recipe or a saved config is a few kilobytes


class StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data only, no ``!!python`` tags) that also refuses
    aliases (``*name``: a few lines of them expand to gigabytes, the "billion laughs") and
    duplicate keys (the last one would silently win)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases are not accepted (*{event.anchor})", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                again = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the constructor refuses it below
                continue
            if again:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key, 60)}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed with :class:`StrictLoader`; a problem is one line naming ``source``."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source}: {len(text):,} characters; a recipe or config is at most {MAX_YAML_BYTES:,}")
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        raise UserError(f"{source}: not valid YAML ({e.problem or e.context}{where})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({str(e).splitlines()[0][:200]})") from None


def read_yaml(path: Path) -> Any:
    """A recipe or a saved config file, parsed with :func:`load_yaml` (UTF-8 only, bounded)."""
    if path.stat().st_size > MAX_YAML_BYTES:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes; a recipe or config is at most {MAX_YAML_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return load_yaml(text, str(path))


def default_recipe(model: str) -> str:
    return {"alexnet-cifar": "cifar", "lenet5": "cifar"}.get(model, "paper")




def resolve_auto(d: Mapping[str, Any], cuda: Callable[[str], bool]) -> dict[str, Any]:
    """Replace ``"auto"`` in amp / channels_last / compile by the value for the device the run will
    use: bf16 autocast, channels_last and torch.compile on CUDA; off on the CPU, where they are
    slower or untested for this code (see configs/fast.yaml). ``cuda(device)``: whether the
    ``device`` field names a CUDA device (the engine's device parser decides; asked only when a
    field is "auto")."""
    d = dict(d)
    if any(d.get(k) == "auto" for k in AUTO_FIELDS):
        on_cuda = cuda(str(d.get("device", "auto")))
        for k, (on, off) in AUTO_FIELDS.items():
            if d.get(k) == "auto":
                d[k] = on if on_cuda else off
    return d


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top: each field replaced, except ``model_options``, merged
    option by option (``--model-opt lrn=none`` keeps the recipe's other options)."""
    d = dict(base)
    for k, v in overrides.items():
        both = k == "model_options" and isinstance(v, Mapping) and isinstance(d.get(k), Mapping)
        d[k] = {**d[k], **v} if both else v
    return d


def resolve(recipe: str | None = None, overrides: Mapping[str, Any] | None = None, *, base: Mapping[str, Any] | None = None,
            source: str | None = None, cuda: Callable[[str], bool] | None = None) -> TrainConfig:
    """The one way to a :class:`TrainConfig`: the fields of ``recipe`` (a name or a .yaml file; by
    default the model's recipe), or ``base`` instead (a run's saved config, an experiment's base);
    then ``overrides`` (:func:`merge`); then the "auto" fields decided
    by ``cuda`` (:func:`resolve_auto`; without it "auto" is refused); validated once, an error
    naming ``source`` (by default the recipe)."""
    over = dict(overrides or {})
    if base is None:
        name = recipe or default_recipe(over.get("model", TrainConfig.model))
        base, source = load_recipe(name), source or f"recipe {name}"
    d = merge(base, over)
    if cuda is not None:
        d = resolve_auto(d, cuda)
    return TrainConfig.from_dict(d, source=source or "config")


def save_yaml(cfg: TrainConfig | dict[str, Any], path: str | Path) -> None:
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))


def parse_value(text: str, source: str = "value") -> Any:
    """``--set key=value`` values: YAML scalars (numbers, booleans, lists)."""
    return load_yaml(text, source)
