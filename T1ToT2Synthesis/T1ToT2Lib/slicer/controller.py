"""One background job at a time for a panel: timer polling, progress, cancel, the log on failure, clean-up.

Both modules' panels drive their jobs (synthesis, metrics, training, evaluation,
alignment) through a :class:`JobController`.  The timer is the panel's
``qt.QTimer`` (any object with ``start``/``stop``; its ``timeout`` is
connected to :meth:`JobController.poll` by the module file), ``ui`` holds the
panel's ``progressBar``, ``cancelButton`` and ``statusLabel``.  No Qt import here.
"""

from __future__ import annotations

import shutil
import threading

from .panel import JobError


class JobController:
    """Starts, polls, cancels and finishes a panel's background jobs, one at a time.

    Each kind of job is :meth:`register`-ed with a function called with the
    new events of every poll and one called with the finished job; after the
    latter the job's work folder (``job.workDir``) is removed and ``on_idle``
    runs (the panel updates its buttons).
    """

    def __init__(self, ui, timer, on_idle=None):
        self.ui, self.timer, self.on_idle = ui, timer, on_idle
        self.job = None
        self.kind = None
        self._handlers: dict = {}

    def register(self, kind: str, finished, events=None) -> None:
        self._handlers[kind] = (finished, events)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.is_running

    def start(self, job, kind: str, status: str) -> None:
        if kind not in self._handlers:
            raise KeyError(f"no handler registered for {kind!r} jobs")
        self.job, self.kind = job, kind
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.statusLabel.text = status
        self.timer.start()
        self._idle()

    def poll(self) -> None:
        """The timer's slot: hand new events over; when the job has ended, finish it."""
        job, kind = self.job, self.kind
        if job is None:
            self.timer.stop()
            return
        finished, on_events = self._handlers[kind]
        events = job.poll()
        if on_events is not None and events:
            on_events(events)
        if job.is_running:
            return
        job.wait(timeout=30)  # ended: collect the lines its reader threads still hold
        events = job.poll()
        if on_events is not None and events:
            on_events(events)
        self.timer.stop()
        self.job, self.kind = None, None
        self._hide()
        try:
            finished(job)
        finally:
            remove_work_dir(job)
            self._idle()

    def cancel(self) -> None:
        """Cancel without waiting: the process is stopped in a thread and the timer notices its end."""
        if self.job is not None:
            self.ui.statusLabel.text = "Cancelling..."
            threading.Thread(target=self.job.cancel, kwargs={"timeout": 30}, daemon=True).start()

    def stop(self) -> None:
        """Cancel a running job and forget it (scene close, module clean-up); its work folder goes too."""
        job, self.job, self.kind = self.job, None, None
        self.timer.stop()
        if job is not None:
            if job.is_running:
                job.cancel(timeout=10)
            remove_work_dir(job)
        self._hide()

    def finish_or_show_log(self, job, finish, title: str):
        """``finish(job)``; on a :class:`JobError` the one-line error in the status line and a message box
        with the job's whole log as details, and None."""
        try:
            return finish(job)
        except JobError as error:
            import slicer.util

            self.ui.statusLabel.text = f"{title} {error}"
            slicer.util.errorDisplay(f"{title}\n{error}", detailedText=error.log)
            return None

    def _hide(self) -> None:
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

    def _idle(self) -> None:
        if self.on_idle is not None:
            self.on_idle()


def remove_work_dir(job) -> None:
    folder = getattr(job, "workDir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
