"""Reading and writing CT volumes: one entry, ``read_volume``, for DICOM folders, CD roots, Enhanced CT files and
NIfTI/NRRD/MetaImage files, with exact LPS geometry and errors that name the file; atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError
from ..fileio import atomic_path
from . import rules
from .dicom_series import (check_dicom_series, choose_series, dicom_series_in, dicomdir_series, is_dicom_file, padding_to_air,
                           quiet_itk, report_unreadable_files, single_file_problem)
from .enhanced_ct import ENHANCED_CT, is_enhanced_ct, read_enhanced_ct
from .nifti import add_comment_extension, check_nifti, comment_extensions, nifti_form_disagreement
from .sidecar import FORMAT as PROVENANCE_FORMAT, provenance_record, read_sidecar, write_sidecar
from .volume import PROVENANCE_PREFIX, READ_SUFFIXES, READER_NOTES, Volume

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
            "a chest CT in HU contains air near -1000. Apply the DICOM rescale slope/intercept first "
            "(in a NIfTI file: set scl_slope and scl_inter, as dcm2niix does)",
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
    notes = list(stray)
    chosen = choose_series(folder, series, series_uid, notes)
    header = chosen.get("header")  # read when the series was listed
    if len(chosen["files"]) == 1 and header is not None and str(header.get("SOPClassUID", "")) == ENHANCED_CT:
        volume = read_enhanced_ct(Path(chosen["files"][0]))
        volume.metadata[READER_NOTES][:0] = notes
        return volume
    padding = {}
    checked = check_dicom_series(chosen["files"], folder, notes, padding)
    files = checked.files
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
    volume.spacing = (*volume.spacing[:2], checked.spacing)  # GDCM takes the first step; the checks measured them all
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
        dicom = suffix in (".dcm", ".ima", "") or (suffix not in READ_SUFFIXES and is_dicom_file(path))
        if dicom and is_enhanced_ct(path):
            volume = read_enhanced_ct(path)  # one file is the whole volume
            if check_hu:
                check_hu_volume(volume, path)
            return volume
        if dicom:
            raise InputError(path, single_file_problem(path))
        if suffix not in READ_SUFFIXES:
            raise InputError(path, f"has an unsupported extension {suffix!r}; use one of {', '.join(READ_SUFFIXES)} or a DICOM folder")
        if suffix in (".nii", ".nii.gz"):
            check_nifti(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(path, f"cannot be read as an image (corrupt or truncated?): {str(exc).strip().splitlines()[-1]}") from exc
        if image.GetDimension() == 4 and image.GetSize()[3] == 1:
            image = image[:, :, :, 0]  # one time point of a 4D file is a 3D volume
        if image.GetDimension() != 3:
            extra = f" with {image.GetSize()[3]} time points" if image.GetDimension() == 4 else ""
            raise InputError(path, f"is a {image.GetDimension()}D image{extra}; give one 3D CT volume")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT volume is needed")
        provenance = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if k.startswith(PROVENANCE_PREFIX)}
        volume = Volume.from_sitk(image, str(path), provenance)
        form_note = nifti_form_disagreement(path) if suffix in (".nii", ".nii.gz") else None
        if form_note:
            volume.metadata[READER_NOTES] = [f"{path.name}: {form_note}"]
    if check_hu:
        check_hu_volume(volume, path)
    return volume


def synthetic_provenance(path: str | Path) -> dict | None:
    """From a volume file's header only: None when it carries no SYNTHETIC label, else its label text and the
    model id and sha256 it names (NIfTI keeps an 80-byte description, so only a 12-hex prefix of the sha256)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, "cannot be read as an image") from exc
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    label = meta.get("ITK_FileNotes", meta.get("descrip", ""))
    if not (label.startswith("SYNTHETIC") or meta.get(PROVENANCE_PREFIX + "synthetic") == "true"):
        # A NIfTI whose 80-byte description was rewritten by another tool: its own sidecar or extension still says so.
        record = read_sidecar(Path(path)) or nifti_provenance(path)
        if record is None or record.get("synthetic") != "true":
            return None
        return {"label": record.get("label", ""), "model_id": record.get("model_id"), "sha256": record.get("model_sha256"),
                "sidecar": record}
    found = {"label": label, "model_id": meta.get(PROVENANCE_PREFIX + "model_id"), "sha256": meta.get(PROVENANCE_PREFIX + "model_sha256")}
    if not found["sha256"]:  # NIfTI: the sidecar written with this very file, or its extension, holds the rest
        record = read_sidecar(Path(path)) or nifti_provenance(path)
        if record is not None:
            found.update(model_id=record.get("model_id"), sha256=record.get("model_sha256"), sidecar=record)
    return found


def nifti_provenance(path) -> dict | None:
    """The provenance a NIfTI output of ours carries in its comment extension, or None."""
    if suffix_of(Path(path)) not in (".nii", ".nii.gz"):
        return None
    for text in comment_extensions(Path(path)):
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("format") == PROVENANCE_FORMAT:
            return record
    return None


def write_volume(volume: Volume, path: str | Path, metadata: dict | None = None) -> Path:
    """Write atomically (temporary file, then rename) as NIfTI/NRRD/MHA; string metadata goes into the header, and a
    synthetic volume gets its JSON sidecar (io/sidecar.py) with everything, lists included."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in WRITE_SUFFIXES:
        raise OutputError(path, f"unsupported output extension {suffix!r}; use one of {', '.join(WRITE_SUFFIXES)}")
    image = volume.to_sitk()
    everything = {**volume.metadata, **(metadata or {})}
    for key, value in everything.items():
        if isinstance(value, (str, int, float)):
            image.SetMetaData(str(key), str(value))
    provenance = provenance_record(everything) if suffix in (".nii", ".nii.gz") else None
    with atomic_path(path) as tmp:
        try:
            if provenance is None:
                sitk.WriteImage(image, str(tmp), useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
            else:  # the header's 80 characters cannot hold the provenance: a comment extension does
                plain = tmp.with_name(tmp.name[:-len(suffix)] + ".plain.nii")
                try:
                    sitk.WriteImage(image, str(plain), useCompression=False)
                    add_comment_extension(plain, tmp, json.dumps(provenance, default=str), compress=suffix == ".nii.gz")
                finally:
                    plain.unlink(missing_ok=True)
        except RuntimeError as exc:
            raise OutputError(path, f"writing failed: {str(exc).strip().splitlines()[-1]}") from exc
    write_sidecar(path, everything)
    return path
