import os

import pytest
import torch

# Tests use few threads: CI has 2 cores; deterministic results also need a fixed thread count.
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """One synthetic-data cache per test session, never the user's ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "alexnet-cache"
    monkeypatch.setenv("ALEXNET_CACHE", str(root))
    yield
