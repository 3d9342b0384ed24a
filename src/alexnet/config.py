"""Typed training configuration: recipes are YAML files of these fields; the CLI overrides them;
the resolved config is written into every run folder and checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alexnet.errors import UserError

RECIPE_DIR = Path(__file__).parent / "configs"


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
    optimizer: str = "paper"  # "paper": §5's update rule; "sgd": torch.optim.SGD; "nesterov"
    label_smoothing: float = 0.0
    # Learning-rate schedule. "plateau": §5, divide by 10 when val error stops improving.
    schedule: str = "plateau"  # plateau | cosine | step | constant
    plateau_patience: int = 2  # epochs without improvement before a drop
    plateau_threshold: float = 1e-3  # improvement smaller than this does not count
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = -1  # -1: automatic
    decode: str = "cpu"  # cpu | cuda | auto: where JPEG records are decoded (cuda: nvJPEG; auto: split on a GPU)
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 0  # 0: same as batch_size
    max_steps_per_epoch: int = 0  # >0: shorter epochs (quick runs and tests)
    train_subset: int = 0  # >0: use only the first N training images
    save_every: int = 0  # steps between checkpoints (0: epoch ends only)
    keep_checkpoints: int = 2
    stall_steps: int = 0  # >0: warn when the loss stays at chance for this many steps
    model_parallel: int = 1  # 2: §3.2's split of the towers over two devices
    tensorboard: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"{source}: unknown field {unknown[0]!r}")
        cfg = cls(**{k: v for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(name: str, accepted: str) -> UserError:
            return UserError(f"{name}={getattr(self, name)!r} is not valid; accepted: {accepted}")

        if self.optimizer not in ("paper", "sgd", "nesterov"):
            raise bad("optimizer", "paper, sgd, nesterov")
        if self.schedule not in ("plateau", "cosine", "step", "constant"):
            raise bad("schedule", "plateau, cosine, step, constant")
        if self.amp not in ("none", "bf16", "fp16"):
            raise bad("amp", "none, bf16, fp16")
        if self.epochs < 1:
            raise bad("epochs", "an integer ≥ 1")
        if self.batch_size < 1:
            raise bad("batch_size", "an integer ≥ 1")
        if not self.lr > 0:
            raise bad("lr", "a number > 0")
        if self.model_parallel not in (1, 2):
            raise bad("model_parallel", "1 or 2")
        if self.decode not in ("cpu", "cuda", "auto"):
            raise bad("decode", "cpu, cuda, auto")


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
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise UserError(f"{p}: a recipe must be a mapping of config fields")
    d.setdefault("recipe", p.stem)
    return d


def default_recipe(model: str) -> str:
    return {"alexnet-cifar": "cifar", "lenet5": "cifar"}.get(model, "paper")


def resolve(recipe: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Recipe defaults, then CLI overrides (None values are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    name = recipe or default_recipe(overrides.get("model", TrainConfig.model))
    d = load_recipe(name)
    d.update(overrides)
    return TrainConfig.from_dict(d, source=f"recipe {name}")


def save_yaml(cfg: TrainConfig | dict[str, Any], path: str | Path) -> None:
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def parse_value(text: str) -> Any:
    """``--set key=value`` values: YAML scalars (numbers, booleans, lists)."""
    return yaml.safe_load(text)
