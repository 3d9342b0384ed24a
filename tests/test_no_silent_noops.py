"""No silent no-ops: a setting that cannot take effect on the data at hand is refused (one line,
exit 2, naming the field, its value and the reason) or warned about; random crops really move on
32×32 data (CIFAR-10's size) under the cifar recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from alexnet import config as config_mod
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data.augment import Augment
from alexnet.data.format import PreparedDataset
from alexnet.data.sources import synthetic
from alexnet.engine import train as engine
from alexnet.engine.device import is_cuda
from alexnet.engine.checks import check_against_data, effective_crop_padding
from alexnet.errors import UserError


@pytest.fixture(scope="module")
def data32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stored at 32×32, the input size of the small nets: the shape of prepared CIFAR-10."""
    return synthetic.build(tmp_path_factory.mktemp("d32") / "ds", size=32, train_per_class=20, val_per_class=5)


@pytest.fixture(scope="module")
def data36(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stored 36×36 for 32×32 crops, as the built-in data."""
    return synthetic.build(tmp_path_factory.mktemp("d36") / "ds", size=36, train_per_class=20, val_per_class=5)


def train_args(data: Path, out: Path, *extra: str, model: str = "alexnet-cifar") -> list[str]:
    return ["train", "--data", str(data), "--model", model, "--out", str(out), "--batch-size", "16", "--workers", "0",
            "--no-progress", "--epochs", "1", "--set", "max_steps_per_epoch=2", *extra]


def one_line_error(err: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- random crops on 32×32 data ---------------------------------------------------------------------


def test_crop_offsets_vary_on_32x32_images_only_with_padding() -> None:
    mean = torch.full((3, 32, 32), 128.0)
    idx = torch.arange(2000)
    unpadded = Augment(mean, torch.ones(3), torch.eye(3), 32, crop_padding=0)
    p, _ = unpadded.params(idx, epoch=0)
    assert set(p.oy.tolist()) == {0} and set(p.ox.tolist()) == {0}  # the no-op the checks refuse
    padded = Augment(mean, torch.ones(3), torch.eye(3), 32, crop_padding=4)
    p, _ = padded.params(idx, epoch=0)
    assert set(p.oy.tolist()) == set(range(-4, 5)) and set(p.ox.tolist()) == set(range(-4, 5))
    q, _ = padded.params(idx, epoch=1)
    assert not torch.equal(p.oy, q.oy)  # a new draw every epoch


def test_the_cifar_recipe_pads_32x32_data_and_not_larger_data(data32: Path, data36: Path) -> None:
    cfg = config_mod.resolve("cifar", {"model": "alexnet-cifar"})
    assert cfg.random_crop and cfg.crop_padding == 4
    assert effective_crop_padding(cfg, (32, 32), 32) == 4
    assert effective_crop_padding(cfg, (36, 36), 32) == 0  # moves within its own 2-pixel margin
    assert effective_crop_padding(TrainConfig(random_crop=False, crop_padding=4), (32, 32), 32) == 0
    for root, offsets in ((data32, set(range(-4, 5))), (data36, set(range(0, 5)))):
        ds = PreparedDataset(root, "train")
        aug = engine.make_augment(cfg, ds, "mean_image_std")
        idx = torch.arange(len(ds))
        p, _ = aug.params(idx, epoch=0)
        assert set(p.oy.tolist()) == offsets and set(p.ox.tolist()) == offsets, root
        # the same image comes out differently in two epochs (crop, flip and colour noise all move)
        x = ds.read_batch(idx[:8])
        a, b = aug.train(x, idx[:8], epoch=0), aug.train(x, idx[:8], epoch=1)
        assert not torch.equal(a, b)


def test_cifar_recipe_on_32x32_data_trains_with_moving_crops(data32: Path, tmp_path: Path, capsys) -> None:
    assert main(train_args(data32, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "augmentation: random 32×32 crops of 32×32 images padded by 4 (9×9 offsets)" in out
    assert "warning:" not in out


def test_the_built_in_size_says_why_it_is_not_padded(data36: Path, tmp_path: Path, capsys) -> None:
    assert main(train_args(data36, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "random 32×32 crops of 36×36 images (5×5 offsets; crop_padding=4 is for images stored at the input size)" in out
    assert "warning:" not in out


# -- refused: one line, exit 2 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--set", "crop_padding=0"], "random_crop=true cannot take effect: images are 32×32, the size of the 32×32 input, "
                                      "and crop_padding=0"),
        (["--ten-crop"], "ten_crop=true cannot take effect: images are 32×32"),
        (["--set", "optimizer=nesterov", "--set", "momentum=0"], "optimizer=nesterov cannot take effect with momentum=0"),
        (["--set", "schedule=step"], "schedule=step cannot take effect: step_epochs is empty"),
        (["--model-opt", "in_channels=1"], "in_channels=1 does not fit the data"),
        (["--model-opt", "bias_init=0.1"], "bias_init=0.1 has no effect with init='he'"),
        (["--model-opt", "lrn_halo=false"], "option 'lrn_halo' does not apply to model 'alexnet-cifar'"),
    ],
)
def test_settings_that_cannot_take_effect_are_refused(data32: Path, tmp_path: Path, capsys, extra: list[str],
                                                      expect: str) -> None:
    rc = main(train_args(data32, tmp_path / "run", *extra))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert expect in line, line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_padding_does_not_make_small_images_acceptable(tmp_path: Path, capsys) -> None:
    """28×28 images padded by 2 give 32×32 training crops, but no test-time crop: such a run used to
    train (validating on padded centre crops) and then `alexnet evaluate` refused its own data.
    Images smaller than the input are refused whatever the padding, as evaluate does."""
    root = synthetic.build(tmp_path / "d28", size=28, train_per_class=2, val_per_class=1)
    rc = main(train_args(root, tmp_path / "run", "--set", "crop_padding=2", "--batch-size", "4"))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "images are 28×28, smaller than the 32×32 input of alexnet-cifar" in line, line


def test_pca_noise_without_colour_statistics_is_refused(data32: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    root = tmp_path / "flat"
    shutil.copytree(data32, root)
    stats = load_file(str(root / "stats.safetensors"))
    stats["eigval"] = torch.zeros(3)  # e.g. images of one colour: no principal components to move along
    save_file(stats, str(root / "stats.safetensors"))
    rc = main(train_args(root, tmp_path / "a"))
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "pca_std=0.1 cannot take effect: the training set's RGB covariance is zero" in line, line
    assert main(train_args(root, tmp_path / "b", "--set", "pca_std=0")) == 0


def test_pca_noise_needs_statistics() -> None:
    with pytest.raises(UserError, match="no RGB statistics"):
        check_against_data(TrainConfig(model="alexnet-cifar", crop_padding=4), image_size=(32, 32), input_size=32)


def test_ten_crop_evaluation_of_images_as_large_as_the_input_is_refused(data32: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(train_args(data32, run)) == 0
    capsys.readouterr()
    rc = main(["evaluate", str(run), "--data", str(data32), "--ten-crop", "--workers", "0"])
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "ten_crop=true cannot take effect" in line, line
    assert main(["evaluate", str(run), "--data", str(data32), "--workers", "0"]) == 0  # the centre crop is fine
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    capsys.readouterr()
    rc = main(["predict", str(run), str(tmp_path / "red.png"), "--ten-crop"])
    line = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "ten_crop=true cannot take effect: images are 32×32" in line, line


# -- warned about: inert settings ---------------------------------------------------------------------


def test_inert_settings_are_warned_about_on_the_command_line(data32: Path, tmp_path: Path, capsys) -> None:
    assert main(train_args(data32, tmp_path / "a", "--set", "random_crop=false", "--set", "weight_decay=0",
                           "--set", "weight_decay_biases=true")) == 0
    out = capsys.readouterr().out
    assert "warning: crop_padding=4 has no effect: random_crop=false" in out
    assert "warning: weight_decay_biases=true has no effect: weight_decay=0" in out
    assert "augmentation: the centre 32×32 crop of 32×32 images" in out


@pytest.mark.parametrize(
    "fields, expect",
    [
        ({"schedule": "cosine", "step_epochs": [5]}, "step_epochs=[5] has no effect with schedule=cosine"),
        ({"schedule": "step", "step_epochs": [5, 20], "epochs": 10}, "step_epochs 20 ≥ epochs=10"),
        ({"schedule": "plateau", "min_lr": 1e-4}, "min_lr=0.0001 has no effect with schedule=plateau"),
        ({"schedule": "cosine", "warmup_epochs": 10, "epochs": 10}, "the whole run is warm-up"),
        ({"schedule": "step", "step_epochs": [5], "lr_drop_factor": 1.0}, "lr_drop_factor=1 has no effect"),
        ({"schedule": "plateau", "max_lr_drops": 0}, "max_lr_drops=0"),
        ({"train_subset": 500}, "train_subset=500 exceeds the 200 training images"),
    ],
)
def test_inert_settings_are_warned_about(fields: dict, expect: str) -> None:
    cfg = TrainConfig(**{"model": "alexnet-cifar", "crop_padding": 4, "epochs": 30, **fields})
    warnings = check_against_data(cfg, image_size=(32, 32), input_size=32, eigval=torch.ones(3), train_images=200)
    assert any(expect in w for w in warnings), warnings


def test_the_recipes_raise_no_warning_on_their_data() -> None:
    for name, size, crop in (("cifar", (32, 32), 32), ("cifar", (36, 36), 32), ("demo", (36, 36), 32),
                             ("paper", (256, 256), 224), ("fast", (256, 256), 224)):
        cfg = config_mod.TrainConfig.from_dict(config_mod.resolve_auto(config_mod.load_recipe(name), is_cuda))
        assert check_against_data(cfg, image_size=size, input_size=crop, eigval=torch.ones(3), train_images=50_000) == [], name
