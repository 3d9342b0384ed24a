"""Source that the tests' launcher scripts (run in a child ``python``) share."""

# Gives a launcher the training loop's stop request: ``stops[-1].signum`` is set once the loop's
# :class:`alexnet.signals.StopRequest` has seen a signal (the wrapper only records each request as
# it is entered).
STOP_FLAG_HOOK = r"""
import alexnet.signals as _signals

stops = []
_orig_enter = _signals.StopRequest.__enter__

def _enter(self):
    stops.append(self)
    return _orig_enter(self)

_signals.StopRequest.__enter__ = _enter
"""
