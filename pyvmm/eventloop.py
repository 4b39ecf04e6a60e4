"""One thread that waits on eventfds (ioeventfd notifies, irqfd resamples) and calls their handlers."""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable


class EventLoop:
    """fd -> handler, served by a daemon thread started only if some fd was added."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread: threading.Thread | None = None
        self._stop = False

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, handler)

    def start(self) -> None:
        if len(self.sel.get_map()) > 1:
            self.thread = threading.Thread(target=self._run, name="eventloop", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select():
                if key.data is None:
                    return
                key.data()

    def stop(self) -> None:
        if self._stop:
            return
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(2)
        self.sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
