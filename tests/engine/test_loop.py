import os
import signal

import pytest

from turbonerf.engine.loop import signals_held, sigterm_as_keyboard_interrupt


def test_sigterm_becomes_keyboard_interrupt_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_keyboard_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_closing_checkpoint_is_not_cut_by_a_second_signal():
    """The race a lost replica and the launcher's SIGTERM make: inside signals_held neither
    SIGTERM nor Ctrl-C interrupts the write, and the handlers come back afterwards."""
    written = []
    sigint_before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN when started in the background
    with sigterm_as_keyboard_interrupt():
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            written.append("checkpoint")
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, None)
        assert signal.getsignal(signal.SIGINT) is sigint_before
    assert written == ["checkpoint"]
