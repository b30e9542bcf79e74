"""A classic DICOM CT series from a folder, a CD's DICOMDIR or a PACS export: which series, which files, their
order along the slice normal, and the checks (missing slices, tilt, spacing, scouts, padding, stray files)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import AIR_HU, Volume

@contextlib.contextmanager
def quiet_itk():
    """ITK/GDCM print their own warnings ('No Series were found') to the terminal; our messages say it better.
    Restored afterwards, so a host process (Slicer) keeps its own setting."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def dicom_series_in(folder: Path) -> list[dict]:
    """The DICOM series directly in ``folder``: uid, description, files (GDCM's order)."""
    reader = sitk.ImageSeriesReader
    series = []
    with quiet_itk():
        uids = reader.GetGDCMSeriesIDs(str(folder))
    for uid in uids:
        files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
        series.append({"series_uid": uid, "files": files, "slices": len(files), "description": _description(files[0])})
    return series


def _description(file: str) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(file, stop_before_pixels=True).get("SeriesDescription", ""))
    except Exception:
        return ""


#: Vendor transfer syntaxes no open reader decodes; the series must be decompressed with the vendor's tools first.
PRIVATE_TRANSFER_SYNTAXES = {"1.3.46.670589.33.1.4.1": "a private Philips codec"}


def single_file_problem(path: Path) -> str:
    """What to say when one file is given: a DICOM slice points to its series folder; anything else says what it is."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return "is a single file that is neither DICOM nor a NIfTI/NRRD/MHA volume (it has no known extension)"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return f"is a multi-frame DICOM object of class {ds.get('SOPClassUID', 'unknown')}; only Enhanced CT multi-frame objects are read"
    uid = str(ds.get("SeriesInstanceUID", ""))
    siblings = [s for s in dicom_series_in(path.parent) if s["series_uid"] == uid] if uid else []
    where = f" ({siblings[0]['slices']} files of its series are there)" if siblings else ""
    return f"is one DICOM slice, not a volume; give the folder that holds its series instead: {path.parent}{where}"


def _refuse_private_compression(path, ds) -> None:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        return
    name = PRIVATE_TRANSFER_SYNTAXES.get(str(syntax))
    if name or syntax.is_private:
        raise InputError(path, f"is compressed with {name or 'a private vendor codec'} (transfer syntax {syntax}); "
                         "decompress the series with the vendor's tools first, then read the decompressed files")


def check_dicom_series(files: list[str], folder: Path, notes: list[str] | None = None, padding: dict | None = None) -> list[str]:
    """Header checks with pydicom; returns the files sorted along the slice normal or raises InputError.

    A LOCALIZER (scout) image filed in the CT series is left out, with a line in ``notes``; ``padding`` gets the
    HU that each file's PixelPaddingValue stands for, so the pixels need no second reading of the headers.
    """
    import pydicom

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from exc
        _refuse_private_compression(f, ds)
        if padding is not None and "PixelPaddingValue" in ds:
            padding[f] = float(ds.PixelPaddingValue) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            if notes is not None:
                notes.append(f"{Path(f).name}: a LOCALIZER (scout) image in the series; left out")
            continue
        headers.append((f, ds))
    modality = {str(ds.get("Modality", "")) for _, ds in headers}
    if modality != {"CT"}:
        raise InputError(folder, f"series modality is {'/'.join(sorted(modality)) or 'missing'}, not CT; synthetic contrast is defined only for CT")
    if len(headers) < 2:
        raise InputError(folder, "series has a single slice (a 2D image); a 3D CT volume is needed")
    for f, ds in headers:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InputError(f, "lacks ImagePositionPatient/ImageOrientationPatient; slice geometry unknown")
    orientation = np.array(headers[0][1].ImageOrientationPatient, float)
    for f, ds in headers:
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise InputError(f, "slice orientation differs from the rest of the series")
    positions = np.array([np.array(ds.ImagePositionPatient, float) for _, ds in headers])
    tilt = [float(ds.get("GantryDetectorTilt", 0) or 0) for _, ds in headers]
    order = check_slice_stack(positions, orientation, tilt, folder)
    return [headers[i][0] for i in order]


def check_slice_stack(positions: np.ndarray, orientation: np.ndarray, tilt: list[float], folder) -> np.ndarray:
    """The order of slices (or frames) along the normal; refuses duplicates, tilt, gaps and uneven spacing."""
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(positions @ normal)
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if np.any(steps < 1e-3):
        raise InputError(folder, "two slices share one position (duplicate slices, or two series mixed in one folder)")
    offsets = positions[-1] - positions[0]
    off_axis = np.linalg.norm(offsets - (offsets @ normal) * normal)
    if any(abs(t) > 0.01 for t in tilt) or off_axis > 0.01 * np.linalg.norm(offsets) + 0.1:
        raise InputError(folder, f"gantry tilt ({max(tilt, key=abs):.1f} deg in the header, slices shifted {off_axis:.1f} mm off the normal); resample to an orthogonal grid first")
    median = float(np.median(steps))
    gaps = np.where(steps > 1.5 * median)[0]
    if len(gaps):
        missing = int(round(float(np.sum(steps[gaps] / median - 1))))
        raise InputError(folder, f"about {missing} slice(s) missing: gap of {steps[gaps[0]]:.2f} mm after slice {gaps[0] + 1} where spacing is {median:.2f} mm")
    if steps.max() - steps.min() > max(0.01 * median, 0.01):
        raise InputError(folder, f"uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm); resample to even spacing first")
    return order


def dicomdir_series(dicomdir: Path) -> list[dict]:
    """The series a DICOMDIR (a CD's or a PACS export's file-set) lists: uid, description, files."""
    import pydicom
    from pydicom.fileset import FileSet

    try:
        fileset = FileSet(pydicom.dcmread(dicomdir))
    except Exception as exc:
        raise InputError(dicomdir, f"is not a readable DICOMDIR ({exc.__class__.__name__}: {exc})") from exc
    series = []
    for uid in fileset.find_values("SeriesInstanceUID"):
        files = sorted(str(instance.path) for instance in fileset.find(SeriesInstanceUID=uid))
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise InputError(missing[0], f"is listed in {dicomdir} but missing ({len(missing)} file(s) of series {uid})")
        if files:
            series.append({"series_uid": str(uid), "files": files, "slices": len(files), "description": _description(files[0])})
    return series


def padding_to_air(volume: Volume, padding_hu: list, notes: list[str]) -> None:
    """Voxels stored as PixelPaddingValue (``padding_hu`` per slice, None where absent) lie outside the
    reconstructed field of view: fill them with air."""
    filled = 0
    for k, value in enumerate(padding_hu):
        if value is None:
            continue
        outside = volume.array[k] == np.float32(value)
        filled += int(outside.sum())
        volume.array[k][outside] = AIR_HU
    if filled:
        notes.append(f"{filled} voxels were padding (PixelPaddingValue), outside the field of view: filled as air ({AIR_HU:.0f} HU)")


def _is_stray(path: Path) -> bool:
    """Not DICOM by name or content (README.txt, Thumbs.db, VERSION): such files sit in CD and PACS exports."""
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] != b"DICM"


def report_unreadable_files(folder: Path, entries: list[Path], series: list[dict]) -> list[str]:
    """GDCM silently leaves out files it cannot parse, which would look like a missing slice: name them.
    Files that are not DICOM at all are ignored; the returned notes say which."""
    import pydicom

    in_series = {str(Path(f).resolve()) for s in series for f in s["files"]}
    notes = []
    for path in sorted(p for p in entries if p.is_file() and str(p.resolve()) not in in_series):
        if _is_stray(path):
            notes.append(f"{path.name}: not a DICOM file; ignored")
            continue
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise InputError(path, f"is not a readable DICOM file ({exc.__class__.__name__}); it sits in the series folder {folder}") from exc
        if "PixelData" in ds and "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
            if len(ds.PixelData) < expected and ds.file_meta.TransferSyntaxUID.is_compressed is False:
                raise InputError(path, f"is truncated: pixel data has {len(ds.PixelData)} of {expected} bytes")
    return notes
