"""Config fields declare their own roles (dataclass field metadata); the sets are derived from it."""

import dataclasses

from alexnet import config
from alexnet.config import TrainConfig


def test_runtime_fields_are_where_and_how_fast_a_run_ran_and_how_it_reported() -> None:
    assert set(config.RUNTIME_FIELDS) == {"device", "workers", "progress", "tensorboard", "tensorboard_every",
                                          "eval_batch_size"}


def test_the_recipe_stored_with_the_weights_leaves_out_runtime_and_saving_fields() -> None:
    assert set(config.NOT_IN_RECIPE) == set(config.RUNTIME_FIELDS) | {"save_every", "keep_checkpoints"}


def test_local_fields_may_differ_between_processes() -> None:
    assert set(config.LOCAL_FIELDS) == {"workers", "progress"}


def test_auto_fields_name_their_cuda_and_cpu_values() -> None:
    assert config.AUTO_FIELDS == {"amp": ("bf16", "none"), "channels_last": (True, False), "compile": (True, False)}


def test_every_role_comes_from_the_fields_own_metadata() -> None:
    declared = {f.name: f.metadata for f in dataclasses.fields(TrainConfig) if f.metadata}
    assert set(declared) == set(config.NOT_IN_RECIPE) | set(config.AUTO_FIELDS)
    assert config.fields_with_role("runtime") == config.RUNTIME_FIELDS
    assert config.fields_with_role("nonexistent") == ()


def test_fields_with_roles_keep_their_defaults() -> None:
    cfg = TrainConfig()
    assert (cfg.device, cfg.workers, cfg.progress, cfg.tensorboard, cfg.tensorboard_every, cfg.eval_batch_size) == \
        ("auto", -1, True, False, 50, 0)
    assert (cfg.save_every, cfg.keep_checkpoints, cfg.amp, cfg.channels_last, cfg.compile) == (0, 2, "none", False, False)
    assert TrainConfig.tensorboard_every == 50  # the class attribute the loop compares against
