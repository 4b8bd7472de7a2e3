"""Progress events of a long job's stages, with an ETA, at least every couple of seconds.

A stage reports ``{"event": <stage>, "stage": <stage>, "done", "total", "elapsed_s", "eta_s", ...}`` on every
:meth:`StageProgress.update` and, while it runs, from a heartbeat thread whenever ``interval`` seconds passed
without one (a single chunk of work can take longer than that).  ``eta_s`` extrapolates the rate so far; it is
None before the first unit is done.  The receiving callback may therefore be called from that thread; calls
never overlap.
"""

from __future__ import annotations

import threading
import time

#: Seconds between heartbeat events at most (the product promises an event at least every 2 s).
INTERVAL = 1.0


class StageProgress:
    def __init__(self, emit, stage: str, total: int, interval: float = INTERVAL, **fields):
        self.emit, self.stage, self.total = emit, stage, max(int(total), 1)
        self.interval, self.fields = float(interval), fields
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._started = self._last_update = self._last_emit = time.monotonic()

    def __enter__(self) -> "StageProgress":
        if self.emit is not None:
            self._send()
            self._thread = threading.Thread(target=self._heartbeat, name=f"progress-{self.stage}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def update(self, done: int) -> None:
        self.done = min(int(done), self.total)
        self._last_update = time.monotonic()
        if self.emit is not None:
            self._send()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def event(self) -> dict:
        now = time.monotonic()
        eta = None
        if self.done:
            per_unit = (self._last_update - self._started) / self.done
            eta = max(per_unit * (self.total - self.done) - (now - self._last_update), 0.0)
        return {"event": self.stage, "stage": self.stage, "done": self.done, "total": self.total,
                "elapsed_s": round(now - self._started, 2), "eta_s": None if eta is None else round(eta, 2), **self.fields}

    def _send(self) -> None:
        with self._lock:
            self._last_emit = time.monotonic()
            self.emit(self.event())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            if time.monotonic() - self._last_emit >= self.interval:
                self._send()
