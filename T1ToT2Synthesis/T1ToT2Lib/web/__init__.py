"""The browser front end, ``t1tot2 serve``: trame-slicer pages over the library's Slicer layer.

* :mod:`.launcher` - the address users open; one session process per browser session, relayed by token.
* :mod:`.page` - one session's page (trame-slicer views, controls, upload and download routes).
* :mod:`.session` - one session's work without the page (scene, synthesis job, profile, metrics, exports).
* :mod:`.safety` - what is let in: data-folder confinement, upload limit, file recognition, DICOM zips.

This package ranks just below :mod:`T1ToT2Lib.cli` (whose ``serve`` command starts it): it may import every
other layer.  trame and slicer-core are imported only when a server starts.
"""

from __future__ import annotations

from pathlib import Path


def default_model():
    """The bundled demo model of a source checkout or a Slicer install, or None."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "Resources" / "demo_model.safetensors",
                      here.parents[2] / "Resources" / "demo_model.safetensors"):
        if candidate.is_file():
            return candidate
    return None
