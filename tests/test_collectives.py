"""engine.distributed's decisions every process shares, in one process and in a gloo group of one."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alexnet.config import TrainConfig
from alexnet.engine import distributed


def _rows() -> torch.Tensor:
    return torch.tensor([[16.0, 36.8, 2.0], [16.0, 36.1, 3.0]], dtype=torch.float64)


@pytest.mark.parametrize("flag", [False, True])
def test_without_torchrun_the_sums_are_this_process_and_the_flag_its_own(flag: bool) -> None:
    block, stopped = distributed.sum_and_any(_rows(), flag)
    assert torch.equal(block, _rows()) and stopped is flag
    assert distributed.agree(flag, torch.device("cpu")) is flag
    distributed.check_same_config(TrainConfig())  # nothing to compare with


@pytest.fixture
def group(tmp_path: Path):  # noqa: ANN201
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("flag", [False, True])
def test_in_a_group_the_flag_rides_in_the_same_all_reduce_as_the_sums(group: None, flag: bool) -> None:
    block, stopped = distributed.sum_and_any(_rows(), flag)
    assert block.device.type == "cpu" and torch.equal(block, _rows()) and stopped is flag
    assert distributed.agree(flag, torch.device("cpu")) is flag
    distributed.check_same_config(TrainConfig())  # rank 0 agrees with itself
    assert distributed.agree_on_restart(True, Path("run"), lambda s: None) is True
