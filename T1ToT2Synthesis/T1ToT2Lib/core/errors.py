"""The one exception type that reaches users as a one-line message."""


class T1ToT2Error(Exception):
    """A problem the user can fix.

    The message is a single line that names the problem and the fix, e.g.
    ``"T1 file 'x.nii' not found: check the path"``.  The command line prints
    it without a traceback; the Slicer modules show it in an error box.
    """
