"""Peak resident memory of a benchmark process, sampled from a thread."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval=0.002):
        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
