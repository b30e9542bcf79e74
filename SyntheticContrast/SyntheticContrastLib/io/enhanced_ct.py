"""Enhanced CT Image Storage: one multi-frame file whose frames are the slices, with geometry and rescale in
functional groups; read frame by frame and checked like a classic series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import rules
from .dicom_series import check_slice_stack
from .volume import READER_NOTES, Volume

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def frame_item(ds, frame, sequence: str):
    """A functional-group item for one frame: its own if the per-frame group has it, else the shared one."""
    for group in (ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]):
        if sequence in group:
            return group[sequence][0]
    raise InputError(ds.filename, f"frame {frame + 1} has no {sequence} (shared or per frame)")


def is_enhanced_ct(path) -> bool:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPClassUID", "")) == ENHANCED_CT
    except Exception:
        return False


def read_enhanced_ct(path: Path) -> Volume:
    """An Enhanced CT Image Storage object: one file, one frame per slice, geometry in functional groups."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        frames = np.asarray(ds.pixel_array, np.float32).reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    except Exception as exc:
        raise InputError(path, f"is an Enhanced CT object whose frames could not be read ({exc.__class__.__name__}: {exc})") from exc
    n = frames.shape[0]
    orientations = [np.array(frame_item(ds, k, "PlaneOrientationSequence").ImageOrientationPatient, float) for k in range(n)]
    if any(not np.allclose(o, orientations[0], atol=rules.ORIENTATION_ATOL) for o in orientations):
        raise InputError(path, "frame orientation differs between frames")
    written = [frame_item(ds, k, "PlanePositionSequence").ImagePositionPatient for k in range(n)]
    notes = [f"{path.name}: an Enhanced CT object of {n} frames, read frame by frame"]
    order, step = check_slice_stack(written, orientations[0], [float(ds.get("GantryDetectorTilt", 0) or 0)], path, notes)
    positions = np.array([[float(v) for v in p] for p in written])
    for k in range(n):  # stored values -> HU with each frame's own rescale
        transform = frame_item(ds, k, "PixelValueTransformationSequence")
        frames[k] = frames[k] * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    row_spacing, col_spacing = (float(v) for v in frame_item(ds, 0, "PixelMeasuresSequence").PixelSpacing)
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    direction = np.column_stack([orientations[0][:3], orientations[0][3:], normal])
    meta = {"dicom_series_uid": str(ds.SeriesInstanceUID), "dicom_files": [str(path)], "series_description": str(ds.get("SeriesDescription", "")),
            READER_NOTES: notes}
    return Volume(np.ascontiguousarray(frames[order]), (col_spacing, row_spacing, step), tuple(positions[order][0]), tuple(direction.ravel()), meta, str(path))
