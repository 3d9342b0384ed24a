"""alexnet.signals.StopRequest: the one stop-on-signal mechanism (prepare's writers, the training loop)."""

import os
import signal

import pytest

from alexnet import signals
from alexnet.errors import Terminated


def _send(sig: int) -> None:
    os.kill(os.getpid(), sig)  # delivered to the main thread before the next bytecode


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_first_signal_is_a_request_with_its_exit_code(sig: int, code: int) -> None:
    with signals.StopRequest(stop_if_unanswered=False) as stop:
        assert not stop.requested and stop.signum is None
        _send(sig)
        assert stop.requested and stop.signum == sig and stop.exit_code() == code


def test_a_stop_another_process_asked_for_exits_as_sigterm() -> None:
    assert signals.StopRequest().exit_code() == 143  # no signal here: a torchrun peer's


def test_the_handlers_found_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with signals.StopRequest(stop_if_unanswered=False):
        assert signal.getsignal(signal.SIGTERM) != before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_signal_stops_at_once_as_the_first_asked() -> None:
    with pytest.raises(Terminated):
        with signals.StopRequest(stop_if_unanswered=False):
            _send(signal.SIGTERM)
            _send(signal.SIGTERM)
            pytest.fail("the second signal did not stop")  # pragma: no cover


def test_a_request_never_looked_at_stops_the_command_unless_the_work_finishes_on_its_own() -> None:
    with pytest.raises(KeyboardInterrupt):
        with signals.StopRequest():
            _send(signal.SIGINT)
    with signals.StopRequest(stop_if_unanswered=False) as stop:  # the training loop: a finished run is kept
        _send(signal.SIGINT)
    assert stop.requested


def test_inside_cut_short_the_first_signal_abandons_the_work_and_only_there() -> None:
    with signals.StopRequest(stop_if_unanswered=False) as stop:
        with pytest.raises(signals.CutShort):
            with stop.cut_short():
                _send(signal.SIGTERM)
                pytest.fail("the signal did not cut the work short")  # pragma: no cover
        assert stop.requested and stop.exit_code() == 143
    with signals.StopRequest(stop_if_unanswered=False) as stop:
        with stop.cut_short():
            pass
        _send(signal.SIGINT)  # after the block: a request, not a cut
        assert stop.requested


def test_a_signal_held_during_start_up_becomes_the_request() -> None:
    signals._pending.append(signal.SIGTERM)  # what install()'s handler records during an import
    with signals.StopRequest(stop_if_unanswered=False) as stop:
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signals.take_pending() is None


def test_a_schedulers_warning_is_sigterm_with_notice_and_repeating_it_is_no_second_signal() -> None:
    with signals.StopRequest(stop_if_unanswered=False) as stop:
        _send(signal.SIGUSR1)
        _send(signal.SIGUSR1)  # the same warning, also forwarded by torchrun's agent: still a request
        assert stop.requested and stop.signum == signal.SIGUSR1 and stop.exit_code() == 143
        assert signals.name(stop.signum) == "SIGUSR1"
        with pytest.raises(Terminated):
            _send(signal.SIGTERM)  # the time limit itself: stops at once
    with pytest.raises(Terminated):
        with signals.StopRequest(stop_if_unanswered=False):
            _send(signal.SIGTERM)
            _send(signal.SIGUSR1)  # a warning after a SIGTERM is a second signal
            pytest.fail("the second signal did not stop")  # pragma: no cover


def test_a_worker_ignores_the_warning_as_it_ignores_ctrl_c() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        signals.worker_signals()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN == signal.getsignal(signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_outside_a_stop_request_the_warning_unwinds_the_command_as_sigterm() -> None:
    restore = signals.install()
    try:
        with pytest.raises(Terminated):
            _send(signal.SIGUSR1)
    finally:
        restore()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
