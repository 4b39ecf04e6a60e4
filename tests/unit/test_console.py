"""The guest's console log: what is kept, and waiting for a line (everything, or only what came after
a mark)."""

from __future__ import annotations

import threading
import time

import pytest

from pyvmm.console import ConsoleLog


def test_wait_for_since_a_mark_skips_the_same_line_printed_before_it():
    log = ConsoleLog()
    log.write(b"balloon: target=0 actual=0 free=65241\r\n")       # at boot
    mark = log.written
    log.write(b"balloon: target=49152 actual=49152 free=16089\r\n")
    with pytest.raises(TimeoutError):
        log.wait_for(r"balloon: target=0 actual=0 free=\d+\r?\n", timeout=0.05, since=mark)
    threading.Timer(0.05, log.write, [b"balloon: target=0 actual=0 free=65241\r\n"]).start()
    t0 = time.monotonic()
    m = log.wait_for(r"balloon: target=0 actual=0 free=(\d+)\r?\n", timeout=5, since=mark)
    assert m.group(1) == "65241" and time.monotonic() - t0 < 5
    assert m.start() == len(b"balloon: target=49152 actual=49152 free=16089\r\n")   # from the mark


def test_a_mark_older_than_what_is_kept_searches_all_that_is_kept():
    log = ConsoleLog(keep=16)
    mark = log.written
    log.write(b"0123456789abcdefXYZ")          # the first 3 bytes are no longer kept
    assert log.written == 19 and log.text() == "3456789abcdefXYZ"
    assert log.wait_for("3456", timeout=0.05, since=mark).start() == 0
    assert log.wait_for("XYZ", timeout=0.05, since=log.written - 3).start() == 0
