"""BackgroundJob: JSON progress from a child process, error messages, clean cancellation."""

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from T1ToT2Lib.slicer.jobs import BackgroundJob, cli_command


def script_job(tmp_path, body, *args):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    return BackgroundJob([sys.executable, str(script), *map(str, args)], cwd=tmp_path)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_cli_command_runs_the_shipped_runner_with_this_python():
    from T1ToT2Lib.slicer.jobs import RUNNER

    assert RUNNER.is_file() and RUNNER.parent.name == "Resources"
    assert cli_command("synthesize", "m.safetensors", Path("t1.nii")) == [
        sys.executable, str(RUNNER), "synthesize", "m.safetensors", "t1.nii"]
    assert cli_command("train", runner=False) == [sys.executable, "-m", "T1ToT2Lib.cli", "train"]
    assert cli_command("train", python="/opt/Slicer/bin/PythonSlicer")[0] == "/opt/Slicer/bin/PythonSlicer"


def test_runner_finds_the_library_from_any_folder_and_reports_its_process(tmp_path):
    """The runner is started from an unrelated folder with no PYTHONPATH: it finds T1ToT2Lib beside itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    isolated = [sys.executable, "-I", *cli_command("--version")[1:]]  # -I: no site-packages path tricks, no cwd
    job = BackgroundJob(isolated, env=env, cwd=tmp_path)
    job.run_to_end(timeout=120)
    from T1ToT2Lib import __version__

    assert job.returncode == 0 and f"t1tot2 {__version__}" in job.log_text, job.log_text
    assert isinstance(job.child_pid, int) and job.child_pid > 0 and job.child_exit_code == 0
    assert job.events == []  # process/exit lines are bookkeeping, not progress events


def test_exit_code_is_the_childs_not_the_launchers(tmp_path):
    """A launcher that always exits 0 (as a wrapper may) does not hide the child's failure."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text("import subprocess, sys\nsubprocess.run([sys.executable, *sys.argv[1:]])\nsys.exit(0)\n")
    job = BackgroundJob([sys.executable, str(launcher), *cli_command("synthesize", tmp_path / "missing.safetensors",
                                                                     tmp_path / "t1.nii", tmp_path / "out.nii")[1:]])
    job.run_to_end(timeout=120)
    assert job.process.returncode == 0  # the launcher's own status
    assert job.child_exit_code == 2 and job.returncode == 2
    assert "missing.safetensors" in job.error_message


def _spawning_launcher(tmp_path):
    """A launcher whose Python child starts a grandchild in its own session (out of the process group)."""
    grandchild = ("import os, signal, time; os.setsid(); "
                  "[signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]; time.sleep(120)")
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import json, os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
        print(json.dumps({{"event": "process", "pid": os.getpid()}}), flush=True)
        print(json.dumps({{"event": "start", "grandchild": grandchild.pid}}), flush=True)
        while True:
            time.sleep(0.05)
    """))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(f"import subprocess, sys\nsys.exit(subprocess.run([sys.executable, {str(child)!r}]).returncode)\n")
    return [sys.executable, str(launcher)]


def test_cancel_leaves_no_process_of_the_tree_alive(tmp_path):
    psutil = pytest.importorskip("psutil")
    if os.name != "posix":
        pytest.skip("the grandchild leaves the process group with setsid (POSIX)")
    job = BackgroundJob(_spawning_launcher(tmp_path)).start()
    assert wait_for(lambda: job.poll() or job.events, timeout=60)
    grandchild = psutil.Process(job.events[0]["grandchild"])
    assert wait_for(lambda: len(job.tree_processes()) >= 3)  # launcher, Python child, grandchild
    tree = [psutil.Process(job.process.pid), *psutil.Process(job.process.pid).children(recursive=True)]
    assert grandchild.pid in {p.pid for p in tree} and job.child_pid in {p.pid for p in tree}
    # Once it has called setsid, a process-group signal would miss it.
    assert wait_for(lambda: os.getpgid(grandchild.pid) != os.getpgid(job.process.pid))
    code = job.cancel(timeout=3)
    assert code is not None and not job.is_running
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == [], [p.pid for p in alive]
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


def test_a_job_is_running_while_its_child_outlives_the_launcher(tmp_path):
    psutil = pytest.importorskip("psutil")
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent("""
        import json, os, time
        print(json.dumps({"event": "process", "pid": os.getpid()}), flush=True)
        while not os.path.exists("release"):
            time.sleep(0.02)
        print(json.dumps({"event": "exit", "code": 3}), flush=True)
    """))
    launcher = tmp_path / "launcher.py"  # starts the child and leaves at once, as a detaching launcher would
    launcher.write_text(f"import subprocess, sys\nsubprocess.Popen([sys.executable, {str(child)!r}])\n")
    job = BackgroundJob([sys.executable, str(launcher)], cwd=tmp_path).start()
    assert wait_for(lambda: job.poll() is not None and job.child_pid is not None and job.process.poll() is not None)
    assert job.is_running and job.returncode is None  # the launcher is gone, the real child is not
    (tmp_path / "release").touch()
    assert job.wait(timeout=30) == 3 and not job.is_running


def test_progress_lines_arrive_while_the_job_runs_and_logs_are_kept(tmp_path):
    job = script_job(tmp_path, """
        import json, sys, time
        print("plain log line")
        for step in range(1, 4):
            print(json.dumps({"event": "step", "step": step, "losses": {"G": 1.0 / step}}))
            time.sleep(0.05)
        print("warning: something", file=sys.stderr)
        while not __import__("os").path.exists("release"):
            time.sleep(0.02)
        print(json.dumps({"event": "done"}))
    """)
    assert not job.is_running and job.returncode is None and job.poll() == []
    job.start()
    seen = []
    assert wait_for(lambda: seen.extend(job.poll()) or len(seen) == 3)
    # Three events arrived while the child is still waiting: progress is streamed, not buffered.
    assert job.is_running and job.returncode is None
    assert [e["step"] for e in seen] == [1, 2, 3] and seen[2]["losses"]["G"] == pytest.approx(1 / 3)
    (tmp_path / "release").touch()
    assert job.wait(timeout=20) == 0
    rest = job.poll()
    assert rest == [{"event": "done"}] and len(job.events) == 4
    assert "plain log line" in job.log_text and "warning: something" in job.log_text
    assert job.error_message is None


def test_error_event_and_stderr_become_the_error_message(tmp_path):
    job = script_job(tmp_path, """
        import json, sys
        print(json.dumps({"event": "error", "message": "T1 file 'x' not found: check the path"}))
        sys.exit(2)
    """)
    job.start()
    assert job.wait(timeout=20) == 2
    job.poll()
    assert job.events[-1]["event"] == "error"
    assert job.error_message == "T1 file 'x' not found: check the path"

    crash = script_job(tmp_path, """
        import sys
        print("starting")
        print("details", file=sys.stderr)
        print("t1tot2 synthesize: error: bad thing: do X", file=sys.stderr)
        sys.exit(2)
    """)
    crash.start()
    assert crash.wait(timeout=20) == 2
    assert crash.error_message == "t1tot2 synthesize: error: bad thing: do X"


def test_real_cli_job_reports_a_one_line_error(tmp_path):
    job = BackgroundJob(cli_command("synthesize", tmp_path / "missing.safetensors", tmp_path / "t1.nii.gz",
                                    tmp_path / "out.nii.gz", "--progress", "json"))
    job.start()
    assert job.wait(timeout=120) == 2
    message = job.error_message
    assert message and "missing.safetensors" in message and "Traceback" not in job.log_text
    assert not (tmp_path / "out.nii.gz").exists()


def test_cancel_stops_the_process_and_leaves_no_partial_output(tmp_path):
    final = tmp_path / "out" / "result.nii.gz"
    job = script_job(tmp_path, """
        import json, sys, time
        from T1ToT2Lib.core.atomic import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            print(json.dumps({"event": "start", "partial": str(tmp)}))
            while True:
                time.sleep(0.05)
    """, final)
    job.start()
    assert wait_for(lambda: job.poll() or job.events)
    partial = Path(job.events[0]["partial"])
    assert partial.exists() and job.is_running
    code = job.cancel(timeout=10)
    assert code is not None and code != 0 and job.returncode == code
    assert not job.is_running and job.cancelled
    assert not final.exists()
    assert not partial.exists(), "the interrupted writer should remove its temporary file"
    assert job.error_message is None  # a cancelled job is not an error to report


def test_cancel_kills_a_child_that_ignores_interrupts(tmp_path):
    job = script_job(tmp_path, """
        import json, signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"event": "start"}))
        while True:
            time.sleep(0.05)
    """)
    job.start()
    assert wait_for(lambda: job.poll() or job.events)
    code = job.cancel(timeout=1.0)
    assert code is not None and not job.is_running
    assert code < 0 if sys.platform != "win32" else code != 0


def test_real_training_job_streams_progress_and_cancels_cleanly(tmp_path):
    from T1ToT2Lib.core.volume import Volume
    from T1ToT2Lib.io.files import write_volume

    rng = np.random.default_rng(3)
    t1 = Volume.from_geometry(rng.uniform(0, 100, (8, 32, 32)), spacing=(0.6, 0.6, 1.0))
    t2 = t1.with_array(100 - t1.array)
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    out = tmp_path / "model.safetensors"
    job = BackgroundJob(cli_command(
        "train", "--t1", tmp_path / "t1.nii.gz", "--t2", tmp_path / "t2.nii.gz", "--model", "pix2pix",
        "--planes", "axial", "--ngf", "4", "--ndf", "4", "--depth", "2", "--epochs", "1000",
        "--batch-size", "2", "--progress", "json", "--out", out))
    job.start()
    steps = []
    assert wait_for(lambda: steps.extend(e for e in job.poll() if e.get("event") == "step") or len(steps) >= 2
                    or not job.is_running, timeout=240)
    assert len(steps) >= 2, job.log_text
    assert job.events[0]["event"] == "start"
    assert all(isinstance(v, float) for v in steps[0]["losses"].values()) and steps[0]["losses"]
    code = job.cancel(timeout=30)
    assert code is not None and code != 0 and not job.is_running
    job.poll()
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    assert json.dumps(job.events)  # every event is plain JSON


def test_cancel_cleans_up_even_when_the_child_inherited_sigint_ignored(tmp_path):
    """A job started from a non-interactive shell (``cmd &``, CI runners) inherits SIGINT ignored."""
    if os.name != "posix":
        pytest.skip("signal dispositions are inherited this way on POSIX only")
    final = tmp_path / "result.nii.gz"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import json, signal, sys, time
        from T1ToT2Lib.core.atomic import atomic_path
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN, "the test must start the writer with SIGINT ignored"
        with atomic_path(sys.argv[1]) as tmp:
            open(tmp, "w").write("half")
            print(json.dumps({"event": "start", "partial": str(tmp)}))
            while True:
                time.sleep(0.05)
    """))
    launcher = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    job = BackgroundJob([sys.executable, "-c", launcher, str(script), str(final)], cwd=tmp_path)
    job.start()
    assert wait_for(lambda: job.poll() or job.events, timeout=120)
    partial = Path(job.events[0]["partial"])
    assert partial.exists()
    job.cancel(timeout=60)
    assert not job.is_running and not final.exists() and not partial.exists()
    assert list(tmp_path.glob(".result*")) == []


def test_a_child_that_must_be_killed_has_its_temporary_files_removed_by_the_parent(tmp_path):
    final = tmp_path / "model.safetensors"
    job = BackgroundJob([sys.executable, str(tmp_path / "job.py"), str(final)], cwd=tmp_path, outputs=[final])
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import json, signal, sys, time
        from T1ToT2Lib.core.atomic import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # a stuck child: only SIGKILL ends it
            open(tmp, "w").write("half")
            print(json.dumps({"event": "start", "partial": str(tmp)}))
            while True:
                time.sleep(0.05)
    """))
    job.start()
    assert wait_for(lambda: job.poll() or job.events, timeout=120)
    partial = Path(job.events[0]["partial"])
    assert partial.exists()
    code = job.cancel(timeout=2)
    assert code is not None and code < 0 and job.cancelled  # killed by a signal, not exited
    assert not final.exists() and not partial.exists()
    unrelated = tmp_path / ".model.keep"
    unrelated.write_text("x")
    assert unrelated.exists()  # only the writer's own temporary names are removed


def test_sigterm_unwinds_a_cli_write(tmp_path):
    """SIGTERM (what a scheduler or ``kill`` sends) gives exit 130 and removes the temporary output."""
    from T1ToT2Lib.core.atomic import interrupt_on_termination, partial_paths
    import signal as signal_module
    final = tmp_path / "out.nii.gz"
    from T1ToT2Lib.core.atomic import atomic_path
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            Path(tmp).write_text("half")
            os.kill(os.getpid(), signal_module.SIGTERM)
            time.sleep(1)
    assert not final.exists() and partial_paths(final) == []
    assert signal_module.getsignal(signal_module.SIGTERM) == signal_module.SIG_DFL  # handler restored
    with interrupt_on_termination():
        assert signal_module.getsignal(signal_module.SIGTERM) not in (signal_module.SIG_DFL, None)
