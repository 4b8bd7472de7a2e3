"""One ``t1tot2 serve`` session's work without a browser: a cancelled or failed synthesis leaves nothing, and a
data-folder choice cannot leave the folder.  Real slicer-core scene, real background job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install trame-slicer[standalone])")
pytest.importorskip("trame_slicer", reason="trame-slicer is not installed")

from T1ToT2Lib.web.safety import WebInputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "Resources" / "demo_model.safetensors"


@pytest.fixture(scope="module")
def phantom():
    from T1ToT2Lib.phantom.render import make_phantom

    return make_phantom("small", 0)


def new_session(tmp_path, **kwargs):
    from T1ToT2Lib.web.session import Session

    return Session(tmp_path / "work", model_path=kwargs.pop("model_path", MODEL), device="cpu", **kwargs)


def leftovers(folder: Path) -> list:
    """Files under ``folder`` other than the session's empty sub-folders."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_cancelled_synthesis_leaves_nothing(tmp_path, phantom):
    session = new_session(tmp_path)
    session.load_phantom_volumes(phantom)
    session.start_synthesis()
    end = time.monotonic() + 120
    while not session.job.events and time.monotonic() < end:  # wait until the child is at work
        session.job.poll()
        time.sleep(0.05)
    assert session.job.events, "the synthesis child reported nothing in 120 s"
    assert session.cancel_synthesis()
    status = session.wait_synthesis(timeout=60)
    assert status["state"] == "cancelled"
    assert session.synthetic_node is None and session.summary()["synthetic"] is None
    assert leftovers(session.work_dir) == []
    with pytest.raises(WebInputError, match="no synthetic T2"):
        session.export("dicom")
    assert not (session.work_dir / "exports" / "synthetic_t2_dicom.zip").exists()
    session.close()


def test_a_failed_synthesis_is_one_line_and_leaves_nothing(tmp_path, phantom):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    session = new_session(tmp_path, model_path=broken)
    session.load_phantom_volumes(phantom)
    session.start_synthesis()
    status = session.wait_synthesis(timeout=180)
    assert status["state"] == "failed"
    assert status["text"].startswith("Synthesis failed: ") and "\n" not in status["text"]
    assert "Traceback" not in status["text"]
    assert session.synthetic_node is None
    assert leftovers(session.work_dir) == []


def test_data_folder_choices_stay_inside(tmp_path, phantom):
    from T1ToT2Lib.io.files import write_volume

    data = tmp_path / "data"
    data.mkdir()
    write_volume(phantom["right_t1"], data / "t1.nii.gz")
    write_volume(phantom["right_t2"], tmp_path / "private_t2.nii.gz")
    (data / "escape.nii.gz").symlink_to(tmp_path / "private_t2.nii.gz")
    session = new_session(tmp_path, data_dir=data)
    for name in ("../private_t2.nii.gz", "escape.nii.gz", str(tmp_path / "private_t2.nii.gz")):
        with pytest.raises(WebInputError, match="not a file of the data folder"):
            session.load_data_file("t2", name)
    assert session.t2_node is None
    session.load_data_file("t1", "t1.nii.gz")
    assert session.summary()["t1"] == "T1: t1.nii.gz"
    with pytest.raises(WebInputError, match="unknown role"):
        session.load_data_file("labels", "t1.nii.gz")


def test_a_session_whose_page_is_gone_ends_and_its_folder_is_deleted(tmp_path):
    """The launcher ends an idle session: its process (and any child) stops and its working folder goes."""
    import asyncio

    from T1ToT2Lib.web.launcher import Launcher

    async def scenario():
        launcher = Launcher(model_path=MODEL, idle_timeout=1.0, work_root=tmp_path / "sessions", device="cpu")
        await launcher._startup(None)
        try:
            first = await launcher.start_session()
            second = await launcher.start_session()
            second.connections = 1  # a page is connected to the second one from the start (idle timeout 1 s)
            await asyncio.wait_for(asyncio.gather(first.ready.wait(), second.ready.wait()), 240)
            assert first.failed is None and first.port != second.port and first.work_dir != second.work_dir
            # A session's own port answers only the launcher's relay, not a direct visitor.
            import urllib.error
            import urllib.request

            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"http://127.0.0.1:{second.port}/", timeout=30)
            assert info.value.code == 403
            (first.work_dir / "inputs").mkdir(exist_ok=True)
            for _ in range(240):
                if first.token not in launcher.sessions and not first.work_dir.exists():  # ended and cleaned up
                    break
                await asyncio.sleep(0.25)
            assert first.token not in launcher.sessions and first.process.returncode is not None
            assert not first.work_dir.exists()
            assert second.token in launcher.sessions and second.process.returncode is None
        finally:
            await launcher._cleanup(None)
        assert launcher.sessions == {} and second.process.returncode is not None and not second.work_dir.exists()

    asyncio.run(scenario())


def test_a_t1_whose_sidecar_names_another_vibe_is_noted_in_the_browsers_status(tmp_path, phantom):
    """A data-folder T1 with its BIDS sidecar (the sequence dcm2niix records): the node the browser shows keeps the
    sequence, the background job gets it, and the status after synthesis says the bundled model learnt another VIBE."""
    import json

    from conftest import cropped

    from T1ToT2Lib.io.files import write_volume

    data = tmp_path / "data"
    data.mkdir()
    write_volume(cropped(phantom["right_t1"], k=slice(80, 120)), data / "t1.nii.gz")
    (data / "t1.json").write_text(json.dumps({"RepetitionTime": 0.009, "EchoTime": 0.003, "FlipAngle": 12}))
    session = new_session(tmp_path, data_dir=data)
    session.load_data_file("t1", "t1.nii.gz")
    session.start_synthesis()
    status = session.wait_synthesis(timeout=300)
    assert status["state"] == "done", status["text"]
    assert "TR 9 ms, TE 3 ms, flip 12°" in status["text"] and "TR 13.5 ms, TE 6 ms, flip 10°" in status["text"]
    session.close()
