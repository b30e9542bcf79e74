"""Reading and writing CT volumes: one entry, ``read_volume``, for DICOM folders, CD roots, Enhanced CT files and
NIfTI/NRRD/MetaImage files, with exact LPS geometry and errors that name the file; atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError, SeriesSelectionError
from ..fileio import atomic_path
from .dicom_series import check_dicom_series, dicom_series_in, dicomdir_series, padding_to_air, quiet_itk, report_unreadable_files, single_file_problem
from .enhanced_ct import is_enhanced_ct, read_enhanced_ct
from .volume import PROVENANCE_PREFIX, READER_NOTES, Volume

READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "does not exist")
    # The effective ids are what open() will use (they differ from the real ones under setuid or seteuid).
    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.R_OK, effective_ids=effective):
        raise InputError(path, "cannot be read (permission denied)")


def check_hu_volume(volume: Volume, path, min_slices: int = 2) -> None:
    """Refuse what cannot be a CT in HU: non-finite voxels, 2D data, or intensities without air."""
    a = volume.array
    if a.ndim != 3 or a.shape[0] < min_slices:
        raise InputError(path, f"is not a 3D volume (shape {a.shape}); a CT series of several slices is needed")
    finite = np.isfinite(a)
    if not finite.all():
        raise InputError(path, f"has {int((~finite).sum())} NaN or infinite voxels")
    lo, hi = float(np.percentile(a, 1)), float(a.max())
    if lo > -500 or hi > 20000 or float(a.min()) < -4000:
        raise InputError(
            path,
            f"intensities do not look like Hounsfield units (1st percentile {lo:.0f}, min {a.min():.0f}, max {hi:.0f}); "
            "a chest CT in HU contains air near -1000. Apply the DICOM rescale slope/intercept first",
        )


def read_dicom_folder(folder: Path, series_uid: str | None) -> Volume:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(folder, "is an empty folder")
    if (folder / "DICOMDIR").is_file():  # a CD or export root: the file-set says where every series' files are
        series, stray = dicomdir_series(folder / "DICOMDIR"), [f"read the series list from {folder / 'DICOMDIR'}"]
    else:
        series = dicom_series_in(folder)
        stray = report_unreadable_files(folder, entries, series)
    if not series:
        raise InputError(folder, "contains no DICOM series (and is not a NIfTI/NRRD/MHA file)")
    if series_uid is None and len(series) > 1:
        raise SeriesSelectionError(folder, series)
    chosen = series[0] if series_uid is None else next((s for s in series if s["series_uid"] == series_uid), None)
    if chosen is None:
        raise InputError(folder, f"has no series {series_uid}; it has {[s['series_uid'] for s in series]}")
    notes = list(stray)
    if len(chosen["files"]) == 1 and is_enhanced_ct(chosen["files"][0]):
        volume = read_enhanced_ct(Path(chosen["files"][0]))
        volume.metadata[READER_NOTES][:0] = notes
        return volume
    padding = {}
    files = check_dicom_series(chosen["files"], folder, notes, padding)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(folder, f"pixel data could not be read (corrupt or truncated file?): {str(exc).strip().splitlines()[-1]}") from exc
    meta = {"dicom_series_uid": chosen["series_uid"], "dicom_files": files, "series_description": chosen["description"],
            READER_NOTES: notes}
    volume = Volume.from_sitk(image, str(folder), meta)
    padding_to_air(volume, [padding.get(f) for f in files], notes)
    return volume


def read_volume(path: str | Path, series_uid: str | None = None, check_hu: bool = True) -> Volume:
    """Read a CT volume; DICOM folders are checked for modality, missing slices, uneven spacing and tilt."""
    path = Path(path)
    _check_readable(path)
    if path.name.upper() == "DICOMDIR" and path.is_file():
        path = path.parent  # the file-set's root folder is meant
    if path.is_dir():
        volume = read_dicom_folder(path, series_uid)
    else:
        suffix = suffix_of(path)
        if (suffix in (".dcm", ".ima") or suffix == "") and is_enhanced_ct(path):
            volume = read_enhanced_ct(path)  # one file is the whole volume
            if check_hu:
                check_hu_volume(volume, path)
            return volume
        if suffix in (".dcm", ".ima") or suffix == "":
            raise InputError(path, single_file_problem(path))
        if suffix not in READ_SUFFIXES:
            raise InputError(path, f"has an unsupported extension {suffix!r}; use one of {', '.join(READ_SUFFIXES)} or a DICOM folder")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(path, f"cannot be read as an image (corrupt or truncated?): {str(exc).strip().splitlines()[-1]}") from exc
        if image.GetDimension() != 3:
            raise InputError(path, f"is a {image.GetDimension()}D image; a 3D CT volume is needed")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT volume is needed")
        provenance = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if k.startswith(PROVENANCE_PREFIX)}
        volume = Volume.from_sitk(image, str(path), provenance)
    if check_hu:
        check_hu_volume(volume, path)
    return volume


def write_volume(volume: Volume, path: str | Path, metadata: dict | None = None) -> Path:
    """Write atomically (temporary file, then rename) as NIfTI/NRRD/MHA; string metadata goes into the header."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in WRITE_SUFFIXES:
        raise OutputError(path, f"unsupported output extension {suffix!r}; use one of {', '.join(WRITE_SUFFIXES)}")
    image = volume.to_sitk()
    for key, value in {**volume.metadata, **(metadata or {})}.items():
        if isinstance(value, (str, int, float)):
            image.SetMetaData(str(key), str(value))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
        except RuntimeError as exc:
            raise OutputError(path, f"writing failed: {str(exc).strip().splitlines()[-1]}") from exc
    return path
