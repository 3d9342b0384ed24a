"""Source that the tests' launcher scripts (run in a child ``python``) share."""

# Gives a launcher the training loop's stop flag: ``stops[-1].signum`` is set once the engine's own
# SIGTERM/SIGINT handler has seen a signal (the wrapper only records the flag the engine yields).
STOP_FLAG_HOOK = r"""
from contextlib import contextmanager as _contextmanager
import alexnet.engine.train as _train

stops = []
_orig_stop_on_signals = _train.stop_on_signals

@_contextmanager
def _stop_on_signals(*a, **k):
    with _orig_stop_on_signals(*a, **k) as stop:
        stops.append(stop)
        yield stop

_train.stop_on_signals = _stop_on_signals
"""
