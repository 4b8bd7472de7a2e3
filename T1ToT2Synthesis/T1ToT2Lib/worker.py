"""Run a ``t1tot2`` command in a separate process and follow its JSON progress lines.

The Slicer modules use this to train or synthesize without freezing the
user interface: the child prints one JSON object per line on stdout
(``--progress json``); a reader thread parses them into a queue that the
widget drains with :meth:`BackgroundJob.poll` from a timer.  No Qt, no Slicer.

Cancelling first sends an interrupt (SIGINT on POSIX, CTRL_BREAK on Windows),
which the child's ``atomic_path`` turns into ``KeyboardInterrupt`` so it
removes its temporary files and no partial output ever appears; a child that
does not stop within half the timeout gets SIGTERM, and finally SIGKILL.
Signals go to the child's whole process group, so a launcher such as
``PythonSlicer`` and the Python process it starts both stop.  A child that had
to be killed cannot clean up, so the job removes the temporary files of the
``outputs`` it was told about.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .atomic import remove_partials

_POSIX = os.name == "posix"


def cli_command(*args, python=None) -> list:
    """``[python, "-m", "T1ToT2Lib.cli", *args]``; ``python`` defaults to this interpreter.

    In Slicer pass ``shutil.which("PythonSlicer")`` so the child gets Slicer's Python and packages.
    """
    return [str(python or sys.executable), "-m", "T1ToT2Lib.cli", *(str(a) for a in args)]


class BackgroundJob:
    """A command running in its own process, with its stdout JSON lines as events.

    ``start()``, then call ``poll()`` periodically for new event dicts; lines
    that are not JSON objects go to :attr:`log_lines`, as do stderr lines.
    """

    def __init__(self, argv, env=None, cwd=None, outputs=()):
        self.argv = [str(a) for a in argv]
        #: Final paths the command writes; their temporary files are removed if the child has to be killed.
        self.outputs = [Path(p) for p in outputs]
        self.env = dict(os.environ if env is None else env)
        # Progress must arrive line by line, not when the child's buffer fills up.
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.cwd = cwd
        self.process = None
        self.cancelled = False
        self.log_lines: list[str] = []
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._error_event_message = None
        self._last_stderr_line = None
        self._lock = threading.Lock()

    # --- life cycle ---------------------------------------------------------
    def start(self) -> "BackgroundJob":
        if self.process is not None:
            raise RuntimeError("this job was already started; create a new BackgroundJob")
        kwargs = {}
        if _POSIX:
            kwargs["start_new_session"] = True
        else:
            # Own process group so CTRL_BREAK reaches the launcher and its Python child; no console window.
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        for stream, handler in ((self.process.stdout, self._on_stdout), (self.process.stderr, self._on_stderr)):
            thread = threading.Thread(target=self._read, args=(stream, handler), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @staticmethod
    def _read(stream, handler):
        with stream:
            for line in stream:
                handler(line.rstrip("\r\n"))

    def _on_stdout(self, line: str):
        event = None
        if line.lstrip().startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
        if isinstance(event, dict):
            if event.get("event") == "error":
                self._error_event_message = str(event.get("message") or event.get("error") or line)
            self._queue.put(event)
        elif line.strip():
            with self._lock:
                self.log_lines.append(line)

    def _on_stderr(self, line: str):
        if line.strip():
            with self._lock:
                self.log_lines.append(line)
                self._last_stderr_line = line.strip()

    def poll(self) -> list:
        """The events received since the last call (never blocks)."""
        new = []
        while True:
            try:
                new.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.events.extend(new)
        return new

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self):
        return None if self.process is None else self.process.poll()

    def wait(self, timeout=None):
        """Wait for the process to end (and its output to be read); returns the return code, or None on timeout."""
        if self.process is None:
            return None
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for thread in self._threads:
            thread.join(timeout=5)
        return self.process.returncode

    def cancel(self, timeout=5.0):
        """Stop the job: interrupt, then terminate, then kill; returns the return code."""
        if not self.is_running:
            return self.wait(timeout)
        self.cancelled = True
        steps = (signal.SIGINT, signal.SIGTERM) if _POSIX else (getattr(signal, "CTRL_BREAK_EVENT", None),)
        for sig in steps:
            self._signal(sig)
            if self.wait(timeout / len(steps)) is not None:
                return self.process.returncode
        self._signal_kill()
        code = self.wait(timeout)
        for output in self.outputs:
            remove_partials(output)
        return code

    def _signal(self, sig):
        try:
            if _POSIX:
                os.killpg(self.process.pid, sig)
            elif sig is not None:
                self.process.send_signal(sig)  # CTRL_BREAK_EVENT to the whole new process group
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _signal_kill(self):
        try:
            if _POSIX:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                # taskkill /T ends the launcher's Python child too; Popen.kill alone would orphan it.
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), check=False)
                self.process.kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass

    # --- results ---------------------------------------------------------------
    @property
    def error_message(self):
        """The job's error for the user: an ``{"event": "error"}`` message, else stderr's last line on failure."""
        if self._error_event_message:
            return self._error_event_message
        code = self.returncode
        if code not in (None, 0) and not self.cancelled:
            return self._last_stderr_line or f"the command exited with status {code}"
        return None

    @property
    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.log_lines)

    def run_to_end(self, timeout=None, poll_interval=0.05):
        """Start if needed and collect every event until the process ends (for scripts and tests)."""
        if self.process is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_running:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                break
            self.poll()
            time.sleep(poll_interval)
        self.wait()
        self.poll()
        return self.events
