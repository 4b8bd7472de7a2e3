"""T1ToT2Lib: everything T1ToT2 does, without Qt.

Both Slicer modules, the ``t1tot2`` command line and the tests import this
package.  It never imports ``qt``, ``ctk`` or ``slicer.ScriptedLoadableModule``;
only :mod:`T1ToT2Lib.slicer.scene` touches MRML.  Torch is imported lazily by the
modules that need it, so importing the package itself is cheap.
"""

__version__ = "0.1.0"

from .core.errors import T1ToT2Error  # noqa: F401
