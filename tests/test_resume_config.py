"""engine.resume.saved_config: the config a --resume continues with."""

from pathlib import Path

import pytest

from alexnet.config import TrainConfig
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import resume
from alexnet.engine import run_folder
from alexnet.errors import UserError


def test_the_run_folders_config_yaml_first(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=4, lr=0.03)
    run_folder.write_config(tmp_path, cfg)
    ckpt.save_checkpoint(tmp_path, {"config": TrainConfig(epochs=9).to_dict()}, 3)
    warned: list[str] = []
    assert resume.saved_config(tmp_path, recipe_given=False, warn=warned.append) == (cfg.to_dict(),
                                                                                     str(tmp_path / "config.yaml"))
    assert warned == []


def test_a_folder_that_lost_config_yaml_uses_its_checkpoints_config_and_says_so(tmp_path: Path) -> None:
    saved = TrainConfig(epochs=9).to_dict()
    path = ckpt.save_checkpoint(tmp_path, {"config": saved}, 3)
    warned: list[str] = []
    assert resume.saved_config(tmp_path, recipe_given=False, warn=warned.append) == (saved, f"{path} (its config)")
    assert warned == [f"{tmp_path}/config.yaml is missing; using the config saved in {path}"]


def test_a_checkpoint_without_a_config_is_refused(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path, {"model": {}}, 3)
    with pytest.raises(UserError, match="holds no training config; pass --recipe"):
        resume.saved_config(tmp_path, recipe_given=False, warn=print)


def test_with_a_recipe_the_recipe_is_the_base(tmp_path: Path) -> None:
    run_folder.write_config(tmp_path, TrainConfig())
    assert resume.saved_config(tmp_path, recipe_given=True, warn=print) is None


@pytest.mark.parametrize("make, what", [(False, "no such folder"), (True, "no config.yaml and no checkpoint")])
def test_nothing_to_resume_is_refused_even_with_a_recipe(tmp_path: Path, make: bool, what: str) -> None:
    out = tmp_path / "run"
    if make:
        out.mkdir()
    for recipe_given in (False, True):
        with pytest.raises(UserError, match=f"nothing to resume in {out} \\({what}\\)"):
            resume.saved_config(out, recipe_given=recipe_given, warn=print)


def test_run_state_round_trips_through_the_checkpoints_run_entry() -> None:
    st = resume.RunState(epoch=2, batch_in_epoch=5, global_step=29, elapsed_s=3.5, stall_count=1,
                         epoch_sums=resume.EpochSums(80.0, 120.5, 30.0), epoch_time_s=1.25)
    d = st.to_dict()
    assert d["step"] == 29 and d["epoch_sums"] == [80.0, 120.5, 30.0]
    assert resume.RunState.from_dict(d) == st
