"""DICOM import and export, kept as one name for older importers: see :mod:`.dicom_read` and :mod:`.dicom_write`."""

from .dicom_read import *  # noqa: F401,F403
from .dicom_read import IMAGE_SOP_CLASSES, REFERENCE_TAGS, list_dicom_series, read_dicom_series  # noqa: F401
from .dicom_write import ANONYMOUS_PATIENT_NAME, export_dicom_series, quantise, write_dicom_series  # noqa: F401
