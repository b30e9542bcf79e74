"""Received instances on disk: each is checked, then written atomically and fsynced before the sender is told
it is stored, so nothing acknowledged is ever lost; a restart finds what the queue had not yet recorded."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError

#: DICOM UIDs are digits and dots: anything else would be a path outside the spool ('..', '/').
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "Rows", "Columns", "PixelData")


def check_instance(ds) -> None:
    """What a series needs to be synthesised; a malformed instance is refused with the reason."""
    missing = [k for k in REQUIRED if k not in ds]
    if missing:
        raise InputError(None, f"instance lacks {', '.join(missing)}")
    for key in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not UID.match(str(ds[key].value)) or len(str(ds[key].value)) > 64:
            raise InputError(None, f"{key} {str(ds[key].value)[:80]!r} is not a DICOM UID")
    if str(ds.Modality) != "CT":
        raise InputError(None, f"modality is {ds.Modality}, not CT")
    from ..io.dicom_series import check_declared_size

    check_declared_size(None, ds, len(ds.PixelData))  # a few hundred KiB must not claim gigabytes


def series_folder(spool: Path, study_uid: str, series_uid: str) -> Path:
    return Path(spool) / "incoming" / study_uid / series_uid


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_instance(spool: Path, ds) -> Path:
    """Write one checked instance (with its file meta) as ``incoming/<study>/<series>/<sop>.dcm``; returns the path
    only once the file and its directory entry are on disk."""
    folder = series_folder(spool, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    partial = folder / f".{ds.SOPInstanceUID}.partial"
    from ..io.dicom_export import write_dicom_file

    with open(partial, "wb") as fh:
        write_dicom_file(fh, ds)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)
    _fsync_dir(folder)
    return path


def spooled_series(spool: Path) -> list[tuple[str, str, Path]]:
    """(study, series, folder) of every spooled series folder that holds an instance."""
    return [(folder.parent.name, folder.name, folder) for folder in sorted((Path(spool) / "incoming").glob("*/*"))
            if folder.is_dir() and any(folder.glob("*.dcm"))]


def unrecorded_series(spool: Path, known_folders: set[str]) -> list[tuple[str, str, Path]]:
    """(study, series, folder) of spooled series the queue does not know: written just before a kill."""
    return [entry for entry in spooled_series(spool) if str(entry[2]) not in known_folders]


def remove_partials(spool: Path) -> int:
    """Files whose writing a kill interrupted: never acknowledged, so the sender still has them."""
    partials = list((Path(spool) / "incoming").glob("*/*/.*.partial"))
    for path in partials:
        path.unlink()
    return len(partials)
