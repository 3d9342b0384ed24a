"""The run folder: every file of a run has one reader and one writer, and they round-trip."""

import json
from pathlib import Path

import pytest

from alexnet.config import TrainConfig
from alexnet.engine import checkpoint as ckpt
from alexnet.engine import run_folder as rf
from alexnet.errors import UserError


def test_config_round_trips_and_is_what_marks_a_run_folder(tmp_path: Path) -> None:
    assert not rf.has_config(tmp_path)
    cfg = TrainConfig(epochs=3, lr=0.02, model_options={"lrn": "none"}, step_epochs=[1, 2])
    rf.write_config(tmp_path, cfg)
    assert rf.has_config(tmp_path) and (tmp_path / "config.yaml").is_file()
    assert rf.read_config(tmp_path) == cfg.to_dict()
    assert TrainConfig.from_dict(rf.read_config(tmp_path)) == cfg


@pytest.mark.parametrize("text, why", [("- 1\n- 2\n", "not a saved training config"), ("", "not a saved training config"),
                                       ("a: &x 1\nb: *x\n", "aliases are not accepted"),
                                       ("epochs: [\n", "not valid YAML")])
def test_a_config_that_is_not_a_mapping_of_fields_is_one_line_naming_the_file(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(UserError, match=why) as e:
        rf.read_config(tmp_path)
    assert str(tmp_path / "config.yaml") in str(e.value)


def test_metrics_append_read_last_and_truncate(tmp_path: Path) -> None:
    assert rf.read_metrics(tmp_path) == [] and rf.last_metrics(tmp_path) == {}
    assert not rf.holds_run(tmp_path)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "time_s": 2.0 * e} for e in (1, 2, 3)]
    for r in rows:
        rf.append_metrics(tmp_path, r)
    assert rf.holds_run(tmp_path)
    assert rf.read_metrics(tmp_path) == rows and rf.last_metrics(tmp_path) == rows[-1]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "train_lo')  # torn by a kill mid-write
    rf.truncate_metrics(tmp_path, 2)
    assert rf.read_metrics(tmp_path) == rows[:2]
    rf.truncate_metrics(tmp_path / "nothing-here", 2)  # no metrics yet: nothing to do


def test_a_checkpoint_alone_means_the_folder_holds_a_run(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path, {"x": 1}, 5)
    assert rf.holds_run(tmp_path) and rf.read_metrics(tmp_path) == []


def test_summary_environment_eval_and_diverged_round_trip(tmp_path: Path) -> None:
    assert not rf.has_summary(tmp_path) and rf.read_environment(tmp_path) is None and rf.read_eval(tmp_path) == {}
    summary = {"epochs": 2, "steps": 10, "final": {"val_top1_err": 0.5}, "time_s": 1.5, "weights": "w"}
    rf.write_summary(tmp_path, summary)
    assert rf.has_summary(tmp_path) and rf.read_summary(tmp_path) == summary
    rf.write_environment(tmp_path)
    env = rf.read_environment(tmp_path)
    assert env == json.loads((tmp_path / "environment.json").read_text()) and "torch" in env
    rf.record_eval(tmp_path, "center", {"top1_err": 0.25, "top5_err": 0.05, "n": 100, "loss": 9.0})
    rf.record_eval(tmp_path, "ten_crop", {"top1_err": 0.2, "top5_err": 0.04, "n": 100})
    assert rf.read_eval(tmp_path) == {"center": {"top1_err": 0.25, "top5_err": 0.05, "n": 100},
                                      "ten_crop": {"top1_err": 0.2, "top5_err": 0.04, "n": 100}}
    assert not rf.is_diverged(tmp_path)
    rf.write_diverged(tmp_path, "the loss is nan at step 3")
    assert rf.is_diverged(tmp_path)
    assert json.loads((tmp_path / "diverged.json").read_text()) == {"error": "the loss is nan at step 3"}


def test_a_damaged_eval_json_is_refused_on_read_and_replaced_on_record(tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="eval.json: expected a JSON object"):
        rf.read_eval(tmp_path)
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(UserError, match="eval.json: not JSON"):
        rf.read_eval(tmp_path)
    rf.record_eval(tmp_path, "center", {"top1_err": 0.5, "top5_err": 0.1, "n": 4})
    assert rf.read_eval(tmp_path) == {"center": {"top1_err": 0.5, "top5_err": 0.1, "n": 4}}


def test_the_elastic_run_id_names_the_job_that_started_the_run(tmp_path: Path) -> None:
    assert not rf.started_by_job(tmp_path, "job-1")
    rf.write_elastic_run_id(tmp_path, "job-1")
    assert (tmp_path / "torchelastic_run_id").read_text() == "job-1\n"
    assert rf.started_by_job(tmp_path, "job-1")
    assert not rf.started_by_job(tmp_path, "job-2") and not rf.started_by_job(tmp_path, None)
