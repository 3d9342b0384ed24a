import os
import signal

import pytest
import torch

# Tests use few threads: CI has 2 cores; deterministic results also need a fixed thread count.
torch.set_num_threads(2)

# The signal tests send SIGINT as a terminal's Ctrl-C would. A suite started as a background job
# (nohup, `cmd &` without job control) runs with SIGINT ignored, which every child inherits, and the
# commands rightly leave an ignored SIGINT alone; a handler here makes the children start with the
# default disposition (exec resets a caught signal to SIG_DFL).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """One synthetic-data cache per test session, never the user's ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "alexnet-cache"
    monkeypatch.setenv("ALEXNET_CACHE", str(root))
    yield
