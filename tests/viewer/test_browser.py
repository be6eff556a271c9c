"""The browser harness's CPU priority (turbonerf.viewer.browser); the browser itself is tested in tests/app/test_view.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from turbonerf.viewer.browser import _autogroup, lower_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def test_lower_priority_sets_every_thread_of_a_process():
    child = subprocess.Popen([sys.executable, "-c", "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"])
    own = _nice(os.getpid())
    try:
        for _ in range(100):  # wait for its second thread
            if len(os.listdir(f"/proc/{child.pid}/task")) >= 2:
                break
            subprocess.run(["sleep", "0.05"])
        changed = lower_priority([child.pid], 7)
        assert changed >= 2
        assert {_nice(int(t)) for t in os.listdir(f"/proc/{child.pid}/task")} == {7}
        assert _nice(os.getpid()) == own  # this process is left as it was
    finally:
        child.kill()
        child.wait()


def test_lower_priority_skips_processes_that_are_gone():
    child = subprocess.Popen(["true"])
    child.wait()
    assert lower_priority([child.pid], 5) == 0


def test_autogroup_is_none_where_the_kernel_gives_no_name(tmp_path):
    empty, named = tmp_path / "empty", tmp_path / "named"
    empty.write_text("")
    named.write_text("/autogroup-208 nice 0\n")
    assert _autogroup(empty) is None
    assert _autogroup(tmp_path / "missing") is None
    assert _autogroup(named) == "/autogroup-208"
