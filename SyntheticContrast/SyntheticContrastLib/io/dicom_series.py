"""A classic DICOM CT series from a folder, a CD's DICOMDIR or a PACS export: which series, which files, their
order along the slice normal, and the checks (missing slices, tilt, spacing, scouts, padding, stray files)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, SeriesSelectionError
from . import rules
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


@contextlib.contextmanager
def quiet_scan():
    """Scanning a folder of other people's objects: GDCM's JPEG 2000 decoder writes straight to file descriptor 2
    ('Invalid number of tiles'), and pydicom warns about each odd header. Neither says anything our notes do not,
    so both are silenced for the scan only, and the descriptor is restored."""
    import logging
    import os
    import sys
    import warnings

    logger = logging.getLogger("pydicom")
    level = logger.level
    saved = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:  # no descriptor 2 (a GUI host without a console): nothing to silence
        saved = None
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet_itk():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def dicom_series_in(folder: Path) -> list[dict]:
    """The DICOM series directly in ``folder``: uid, files (GDCM's order), description and kind. GDCM's scan throws
    on some malformed objects (pydicom's own test folder has them): then pydicom lists the series instead."""
    reader = sitk.ImageSeriesReader
    with quiet_scan():
        try:
            uids = reader.GetGDCMSeriesIDs(str(folder))
            return [_series_entry(uid, list(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in uids]
        except RuntimeError:
            return _series_by_pydicom(folder)


def _series_by_pydicom(folder: Path) -> list[dict]:
    """Files with pixels grouped by SeriesInstanceUID; what cannot be parsed is left to report_unreadable_files."""
    import pydicom

    groups: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
        except Exception:
            continue
        if "PixelData" in ds and "SeriesInstanceUID" in ds:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append(str(path))
    return [_series_entry(uid, files) for uid, files in groups.items()]


#: The series kind that can be synthesised; every other kind is named and left out of the choice.
CT_IMAGES = "CT images"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _series_entry(uid: str, files: list[str]) -> dict:
    """A series as listed to the user: uid, files, slices, description, and its kind (CT images, a localizer
    series, screen captures such as a dose screen, or another modality)."""
    import pydicom

    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    except Exception:
        return {"series_uid": uid, "files": files, "slices": len(files), "description": "", "kind": "unreadable"}
    modality = str(ds.get("Modality", "") or "no modality")
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE):
        kind = "screen captures (such as a dose screen)"
    elif is_localizer(ds):
        kind = "a localizer series"
    else:
        kind = CT_IMAGES if modality == "CT" else f"{modality} images"
    return {"series_uid": uid, "files": files, "slices": len(files), "description": str(ds.get("SeriesDescription", "")), "kind": kind,
            "header": ds}  # the first file's header, so callers need not read it again


def choose_series(folder: Path, series: list[dict], series_uid: str | None, notes: list[str]) -> dict:
    """The series to read: the one asked for, else the only CT image series (the others named in ``notes``)."""
    if series_uid is not None:
        chosen = next((s for s in series if s["series_uid"] == series_uid), None)
        if chosen is None:
            raise InputError(folder, f"has no series {series_uid}; it has {[s['series_uid'] for s in series]}")
        return chosen
    candidates = [s for s in series if s["kind"] == CT_IMAGES]
    if len(series) > 1 and len(candidates) != 1:
        raise SeriesSelectionError(folder, series)
    chosen = candidates[0] if candidates else series[0]
    notes += [f"series {s['description'] or s['series_uid']} ({s['slices']} images): {s['kind']}; left out"
              for s in series if s is not chosen]
    return chosen


#: Vendor transfer syntaxes no open reader decodes; the series must be decompressed with the vendor's tools first.
PRIVATE_TRANSFER_SYNTAXES = {"1.3.46.670589.33.1.4.1": "a private Philips codec"}
#: Private creators whose block holds the pixels in a vendor's own compression, with no standard PixelData.
PRIVATE_PIXEL_CREATORS = {"PMSCT_RLE1": "Philips' private PMSCT_RLE1 compression"}


def private_compression(ds) -> str | None:
    """The name of the vendor compression ``ds`` is stored in, or None: a private transfer syntax, or pixels kept in
    a private block (Philips PMSCT_RLE1) instead of PixelData."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None:
        name = PRIVATE_TRANSFER_SYNTAXES.get(str(syntax))
        if name or syntax.is_private:
            return f"{name or 'a private vendor codec'} (transfer syntax {syntax})"
    if "PixelData" not in ds:
        for element in ds:
            if element.tag.is_private_creator and str(element.value).strip() in PRIVATE_PIXEL_CREATORS:
                return f"{PRIVATE_PIXEL_CREATORS[str(element.value).strip()]} (private block {element.tag}, no PixelData)"
    return None


def is_dicom_file(path: Path) -> bool:
    """DICOM by its content (the 'DICM' preamble), whatever the file's name: archives name files by UID
    ('CT.1.3.12.2.1107....'), with no extension or a number as one."""
    from pydicom.misc import is_dicom

    try:
        return is_dicom(str(path))
    except OSError:
        return False


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
    if siblings and siblings[0]["slices"] < 2:  # pointing to the folder would only lead to a refusal as 2D
        return ("is a single 2D DICOM image, and its folder holds no other image of its series; a 3D CT series of "
                "several slices is needed")
    where = f" ({siblings[0]['slices']} files of its series are there)" if siblings else ""
    return f"is one DICOM slice, not a volume; give the folder that holds its series instead: {path.parent}{where}"


def _refuse_private_compression(path, ds) -> None:
    name = private_compression(ds)
    if name:
        raise InputError(path, f"is compressed with {name}; decompress the series with the vendor's tools first, then "
                         "read the decompressed files")


def _pixel_spacing(path, ds) -> tuple[float, float]:
    """PixelSpacing as two positive millimetre values; GDCM reads a missing, zero or unparseable one as 1 mm."""
    try:
        values = [float(v) for v in ds.PixelSpacing]
    except Exception as exc:  # absent, or text pydicom cannot turn into numbers
        raw = ds.get("PixelSpacing", None)
        shown = "missing" if raw is None else repr(str(getattr(raw, "value", raw)))
        raise InputError(path, f"PixelSpacing is {shown}: not two numbers in mm, so the voxel size is unknown") from exc
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(path, f"PixelSpacing is {values}: a CT needs two positive values in mm")
    return values[0], values[1]


def check_declared_size(path, ds, file_size: int) -> int:
    """Rows x Columns x frames x BitsAllocated against the bounds and, for uncompressed data, against the bytes the
    file holds: a few hundred KiB must not claim gigabytes. Returns the voxels declared."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rules.check_voxel_budget(path, rows * columns * frames, rows, columns)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        expected = rows * columns * frames * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.get("BitsAllocated", 16) or 16) // 8
        if file_size < expected:
            raise InputError(path, f"is truncated or declares more than it holds: {rows} x {columns} x {frames} pixels need "
                                   f"{expected} bytes, the file has {file_size}")
    return rows * columns * frames


@dataclass
class CheckedSeries:
    """A series' image files in slice order along the normal, and the slice spacing the positions give."""

    files: list[str]
    spacing: float


def check_dicom_series(files: list[str], folder: Path, notes: list[str] | None = None, padding: dict | None = None) -> CheckedSeries:
    """Header checks with pydicom; the files sorted along the slice normal, or InputError.

    A LOCALIZER (scout) image filed in the CT series is left out, with a line in ``notes``; ``padding`` gets the
    HU that each file's PixelPaddingValue stands for, so the pixels need no second reading of the headers.
    """
    import pydicom

    headers, declared = [], 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from exc
        _refuse_private_compression(f, ds)
        declared += check_declared_size(f, ds, Path(f).stat().st_size)
        if padding is not None and "PixelPaddingValue" in ds:
            padding[f] = float(ds.PixelPaddingValue) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        if is_localizer(ds):
            if notes is not None:
                notes.append(f"{Path(f).name}: a LOCALIZER (scout) image in the series; left out")
            continue
        headers.append((f, ds))
    rules.check_voxel_budget(folder, declared)
    modality = {str(ds.get("Modality", "")) for _, ds in headers}
    if modality != {"CT"}:
        raise InputError(folder, f"series modality is {'/'.join(sorted(modality)) or 'missing'}, not CT; synthetic contrast is defined only for CT")
    if len(headers) < 2:
        raise InputError(folder, "series has a single slice (a 2D image); a 3D CT volume is needed")
    for f, ds in headers:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InputError(f, "lacks ImagePositionPatient/ImageOrientationPatient; slice geometry unknown")
        _pixel_spacing(f, ds)
    orientation = np.array(headers[0][1].ImageOrientationPatient, float)
    for f, ds in headers:
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), orientation, atol=rules.ORIENTATION_ATOL):
            raise InputError(f, "slice orientation differs from the rest of the series")
    written = [ds.ImagePositionPatient for _, ds in headers]
    tilt = [float(ds.get("GantryDetectorTilt", 0) or 0) for _, ds in headers]
    order, spacing = check_slice_stack(written, orientation, tilt, folder, notes)
    return CheckedSeries([headers[i][0] for i in order], spacing)


def is_localizer(ds) -> bool:
    return "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]


def written_precision_mm(values) -> float:
    """How far rounding may have moved positions written as decimal strings: half their last decimal place
    (0.05 mm for '12.3'). Values without their original text are taken as exact."""
    decimals = 0
    for value in values:
        text = str(getattr(value, "original_string", "") or "").strip()
        if not text or "e" in text.lower():
            return 0.0
        decimals = max(decimals, len(text.partition(".")[2]))
    return 0.5 * 10.0 ** -decimals


def check_slice_stack(written_positions, orientation: np.ndarray, tilt: list[float], folder, notes: list[str] | None = None):
    """(order along the normal, slice spacing) of slices or frames; refuses duplicates, tilt, gaps and uneven
    spacing that the rounding of the written positions does not explain (rules.py)."""
    positions = np.array([[float(v) for v in p] for p in written_positions])
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(positions @ normal)
    positions = positions[order]
    along = positions @ normal
    steps = np.diff(along)
    if np.any(steps < rules.DUPLICATE_STEP_MM):
        raise InputError(folder, "two slices share one position (duplicate slices, or two series mixed in one folder)")
    offsets = positions[-1] - positions[0]
    off_axis = np.linalg.norm(offsets - (offsets @ normal) * normal)
    if any(abs(t) > rules.TILT_DEGREES for t in tilt) or off_axis > rules.OFF_AXIS_SHARE * np.linalg.norm(offsets) + rules.OFF_AXIS_MM:
        raise InputError(folder, f"gantry tilt ({max(tilt, key=abs):.1f} deg in the header, slices shifted {off_axis:.1f} mm off the normal); resample to an orthogonal grid first")
    median = float(np.median(steps))
    gaps = np.where(steps > rules.GAP_FACTOR * median)[0]
    if len(gaps):
        missing = int(round(float(np.sum(steps[gaps] / median - 1))))
        raise InputError(folder, f"about {missing} slice(s) missing: gap of {steps[gaps[0]]:.2f} mm after slice {gaps[0] + 1} where spacing is {median:.2f} mm")
    if steps.max() - steps.min() <= max(rules.UNEVEN_RELATIVE * median, rules.UNEVEN_MM):
        return order, float(np.mean(steps))
    # Thin slices written with few decimals (0.625 mm steps as 0.6 and 0.7): even, if rounding explains it.
    rounding = written_precision_mm(v for p in written_positions for v in p)
    k = np.arange(len(along))
    spacing, start = np.polyfit(k, along, 1)
    off_grid = float(np.abs(along - (start + spacing * k)).max())
    # Rounding bounds the error against the true grid; a least-squares line may sit up to that far again from it.
    if 0 < rounding <= rules.ROUNDING_SHARE_OF_SPACING * spacing and off_grid <= 2 * rounding + 1e-6:
        if notes is not None:
            notes.append(f"slice positions are written to {2 * rounding:g} mm; read on an even grid of {spacing:.4f} mm "
                         f"(steps {steps.min():.3f} to {steps.max():.3f} mm, every position within {off_grid:.3f} mm of it)")
        return order, float(spacing)
    raise InputError(folder, f"uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm); resample to even spacing first")


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
            series.append(_series_entry(str(uid), files))
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
        _refuse_private_compression(path, ds)  # GDCM leaves such files out of every series without a word
        if "PixelData" not in ds:
            notes.append(f"{path.name}: {ds.get('Modality', 'a DICOM')} object without pixels "
                         f"({ds.get('SeriesDescription', '') or 'no description'}); ignored")
            continue
        if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
            if len(ds.PixelData) < expected and ds.file_meta.TransferSyntaxUID.is_compressed is False:
                raise InputError(path, f"is truncated: pixel data has {len(ds.PixelData)} of {expected} bytes")
    return notes
