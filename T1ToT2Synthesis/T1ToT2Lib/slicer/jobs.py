"""Run a ``t1tot2`` command in a separate process and follow its JSON progress lines.

The Slicer modules use this to train or synthesize without freezing the
user interface: the child prints one JSON object per line on stdout
(``--progress json``); a reader thread parses them into a queue that the
widget drains with :meth:`BackgroundJob.poll` from a timer.  No Qt, no Slicer.

Cancelling first sends an interrupt (SIGINT on POSIX, CTRL_BREAK on Windows),
which the child's ``atomic_path`` turns into ``KeyboardInterrupt`` so it
removes its temporary files and no partial output ever appears; a child that
does not stop within half the timeout gets SIGTERM, and finally SIGKILL.
Signals go to the child's whole process *tree* (with psutil; the process group
without it), so a launcher such as ``PythonSlicer`` and the Python process it
starts both stop, even one that left the group.  A child that had to be killed
cannot clean up, so the job removes the temporary files of the ``outputs`` it
was told about.

The Slicer modules start :data:`RUNNER` (``Resources/t1tot2_child.py``, shipped
beside the library) rather than a ``-c`` bootstrap: it finds the library next
to itself and reports the real Python process's id and exit code as
``{"event": "process"}`` and ``{"event": "exit"}`` lines, so
:attr:`BackgroundJob.is_running` and :attr:`BackgroundJob.returncode` describe
that process, not the launcher that started it.
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

from ..core.atomic import remove_partials

try:  # listed in the requirements; without it cancel falls back to the process group
    import psutil
except ImportError:  # pragma: no cover - exercised where psutil is absent
    psutil = None

_POSIX = os.name == "posix"
#: The child-process entry script shipped with the Synthesis module (``Resources/`` beside ``T1ToT2Lib/``).
RUNNER = Path(__file__).resolve().parents[2] / "Resources" / "t1tot2_child.py"
#: Events the runner prints about itself; they are bookkeeping, not progress, and are not queued.
_PROCESS_EVENTS = ("process", "exit")


def python_executable() -> str:
    """The Python for child processes: Slicer's ``PythonSlicer`` launcher when on PATH, else this interpreter."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


def cli_command(*args, python=None, runner=None) -> list:
    """argv running ``t1tot2 ARGS`` in a child process: ``[python, RUNNER, *args]``.

    ``python`` defaults to this interpreter; in Slicer pass
    ``shutil.which("PythonSlicer")`` so the child gets Slicer's Python and
    packages.  ``runner`` defaults to :data:`RUNNER` when it exists (the
    Slicer modules and a source checkout); a pip-installed library has no
    Resources folder and runs ``-m T1ToT2Lib.cli`` instead (no process/exit
    events then).  Pass ``runner=False`` to force the ``-m`` form.
    """
    python = str(python or sys.executable)
    runner = RUNNER if runner is None and RUNNER.is_file() else runner
    if runner:
        return [python, str(runner), *(str(a) for a in args)]
    return [python, "-m", "T1ToT2Lib.cli", *(str(a) for a in args)]


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
        #: The real Python process's id and exit code, as the runner reports them (None without the runner).
        self.child_pid = None
        self.child_exit_code = None
        self._tree: dict = {}  # pid -> psutil.Process of every descendant seen, so an orphan is still found

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
        self._remember_tree()
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
        if isinstance(event, dict) and event.get("event") in _PROCESS_EVENTS and len(event) == 2:
            if event["event"] == "process":
                self.child_pid = event.get("pid")
                self._remember_tree()
            else:
                self.child_exit_code = event.get("code")
        elif isinstance(event, dict):
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
        if self.process is not None and self.process.poll() is None:
            self._remember_tree()  # keep the tree current, so an orphaned grandchild is still known at cancel
        return new

    # --- the process tree -------------------------------------------------------
    def _remember_tree(self):
        """Add the launcher's current descendants (and the runner's own process) to the known tree."""
        if psutil is None or self.process is None:
            return
        with self._lock:
            found = []
            if self.process.poll() is None:  # once reaped, the launcher's id may belong to another process
                try:
                    root = psutil.Process(self.process.pid)
                    found = [root, *root.children(recursive=True)]
                except psutil.Error:
                    pass
            for proc in list(self._tree.values()):  # descendants of known processes that outlived the launcher
                if proc.pid != self.process.pid and _alive(proc):
                    try:
                        found.extend(proc.children(recursive=True))
                    except psutil.Error:
                        pass
            if self.child_pid and self.child_pid not in self._tree:
                try:
                    found.append(psutil.Process(int(self.child_pid)))
                except (psutil.Error, ValueError):
                    pass
            for proc in found:
                self._tree.setdefault(proc.pid, proc)

    def tree_processes(self) -> list:
        """The launcher and every descendant seen so far that is still alive (psutil.Process objects)."""
        self._remember_tree()
        with self._lock:
            known = list(self._tree.values())
        return [p for p in known if _alive(p)]

    @property
    def is_running(self) -> bool:
        """True while the launcher or any process it started (the real Python child included) is alive."""
        if self.process is None:
            return False
        if self.process.poll() is None:
            return True
        return bool(psutil is not None and self.tree_processes())

    @property
    def returncode(self):
        """The child's exit code (the runner's report, else the launcher's); None while anything runs."""
        if self.process is None or self.is_running:
            return None
        code = self.process.poll()
        if self.child_exit_code is not None and code is not None and code >= 0:
            return int(self.child_exit_code)  # a launcher killed by a signal reports that instead
        return code

    def wait(self, timeout=None):
        """Wait for the process to end (and its output to be read); returns the return code, or None on timeout."""
        if self.process is None:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if psutil is not None:
            left = self.tree_processes()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, alive = psutil.wait_procs(left, timeout=remaining)
            if alive:
                return None
        for thread in self._threads:
            thread.join(timeout=5)
        code = self.returncode
        if code not in (0, None):
            # A child that died (SIGKILL, out-of-memory killer, crash) could not remove its temporary files.
            for output in self.outputs:
                remove_partials(output)
        return code

    def cancel(self, timeout=5.0):
        """Stop the job: interrupt, then terminate, then kill; returns the return code."""
        if not self.is_running:
            return self.wait(timeout)
        self.cancelled = True
        self._remember_tree()
        steps = (signal.SIGINT, signal.SIGTERM) if _POSIX else (getattr(signal, "CTRL_BREAK_EVENT", None),)
        for sig in steps:
            self._signal(sig)
            if self.wait(timeout / len(steps)) is not None:
                return self.returncode
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
        if _POSIX and sig is not None and psutil is not None:
            # Descendants that left the group (setsid, a launcher's own session) get the signal too.
            for proc in self.tree_processes():
                try:
                    if os.getpgid(proc.pid) != self.process.pid:
                        proc.send_signal(sig)
                except (psutil.Error, OSError):
                    pass

    def _signal_kill(self):
        if psutil is not None:
            for proc in self.tree_processes():
                try:
                    proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: every process of the tree
                except psutil.Error:
                    pass
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


def _alive(proc) -> bool:
    """Whether a psutil process still runs (a zombie waiting for its parent does not)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
