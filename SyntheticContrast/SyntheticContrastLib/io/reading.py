"""Reading and writing CT volumes (NIfTI, NRRD, MHA, DICOM series) with exact geometry and clear errors.

Geometry follows SimpleITK/DICOM: LPS physical space, spacing/origin in (x, y, z), arrays indexed (z, y, x).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError, SeriesSelectionError
from ..fileio import atomic_path

READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


#: Header keys that carry a synthetic volume's provenance; reading keeps them in ``Volume.metadata``.
PROVENANCE_PREFIX = "SyntheticContrast."


@dataclass
class Volume:
    """A 3D image in HU with its LPS geometry; ``array`` is (z, y, x) float32."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    metadata: dict = field(default_factory=dict)
    source: str = ""

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, source: str = "", metadata: dict | None = None) -> "Volume":
        return cls(
            array=sitk.GetArrayFromImage(image).astype(np.float32, copy=False),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            metadata=dict(metadata or {}),
            source=source,
        )

    def with_array(self, array: np.ndarray, **metadata) -> "Volume":
        """Same geometry, new voxels (e.g. the synthetic result of this volume)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, {**metadata}, self.source)

    def index_to_physical(self, ijk) -> np.ndarray:
        """Continuous (i, j, k) = (x, y, z) index -> LPS millimetres."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin, float) + d @ (np.asarray(ijk, float) * np.asarray(self.spacing, float))

    def physical_to_index(self, point) -> np.ndarray:
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.linalg.solve(d, np.asarray(point, float) - np.asarray(self.origin, float)) / np.asarray(self.spacing, float)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "does not exist")
    # The effective ids are what open() will use (they differ from the real ones under setuid or seteuid).
    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.R_OK, effective_ids=effective):
        raise InputError(path, "cannot be read (permission denied)")


@contextlib.contextmanager
def _quiet_itk():
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
    with _quiet_itk():
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


def _single_file_problem(path: Path) -> str:
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


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _frame_item(ds, frame, sequence: str):
    """A functional-group item for one frame: its own if the per-frame group has it, else the shared one."""
    for group in (ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]):
        if sequence in group:
            return group[sequence][0]
    raise InputError(ds.filename, f"frame {frame + 1} has no {sequence} (shared or per frame)")


def _is_enhanced_ct(path) -> bool:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPClassUID", "")) == ENHANCED_CT
    except Exception:
        return False


def _read_enhanced_ct(path: Path) -> Volume:
    """An Enhanced CT Image Storage object: one file, one frame per slice, geometry in functional groups."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        frames = np.asarray(ds.pixel_array, np.float32).reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    except Exception as exc:
        raise InputError(path, f"is an Enhanced CT object whose frames could not be read ({exc.__class__.__name__}: {exc})") from exc
    n = frames.shape[0]
    orientations = [np.array(_frame_item(ds, k, "PlaneOrientationSequence").ImageOrientationPatient, float) for k in range(n)]
    if any(not np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
        raise InputError(path, "frame orientation differs between frames")
    positions = np.array([np.array(_frame_item(ds, k, "PlanePositionSequence").ImagePositionPatient, float) for k in range(n)])
    order = check_slice_stack(positions, orientations[0], [float(ds.get("GantryDetectorTilt", 0) or 0)], path)
    for k in range(n):  # stored values -> HU with each frame's own rescale
        transform = _frame_item(ds, k, "PixelValueTransformationSequence")
        frames[k] = frames[k] * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    row_spacing, col_spacing = (float(v) for v in _frame_item(ds, 0, "PixelMeasuresSequence").PixelSpacing)
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    step = float(np.median(np.diff(positions[order] @ normal))) if n > 1 else 1.0
    direction = np.column_stack([orientations[0][:3], orientations[0][3:], normal])
    meta = {"dicom_series_uid": str(ds.SeriesInstanceUID), "dicom_files": [str(path)], "series_description": str(ds.get("SeriesDescription", "")),
            READER_NOTES: [f"{path.name}: an Enhanced CT object of {n} frames, read frame by frame"]}
    return Volume(np.ascontiguousarray(frames[order]), (col_spacing, row_spacing, step), tuple(positions[order][0]), tuple(direction.ravel()), meta, str(path))


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


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Volume:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(folder, "is an empty folder")
    if (folder / "DICOMDIR").is_file():  # a CD or export root: the file-set says where every series' files are
        series, stray = dicomdir_series(folder / "DICOMDIR"), [f"read the series list from {folder / 'DICOMDIR'}"]
    else:
        series = dicom_series_in(folder)
        stray = _report_unreadable_files(folder, entries, series)
    if not series:
        raise InputError(folder, "contains no DICOM series (and is not a NIfTI/NRRD/MHA file)")
    if series_uid is None and len(series) > 1:
        raise SeriesSelectionError(folder, series)
    chosen = series[0] if series_uid is None else next((s for s in series if s["series_uid"] == series_uid), None)
    if chosen is None:
        raise InputError(folder, f"has no series {series_uid}; it has {[s['series_uid'] for s in series]}")
    notes = list(stray)
    if len(chosen["files"]) == 1 and _is_enhanced_ct(chosen["files"][0]):
        volume = _read_enhanced_ct(Path(chosen["files"][0]))
        volume.metadata[READER_NOTES][:0] = notes
        return volume
    padding = {}
    files = check_dicom_series(chosen["files"], folder, notes, padding)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(folder, f"pixel data could not be read (corrupt or truncated file?): {str(exc).strip().splitlines()[-1]}") from exc
    meta = {"dicom_series_uid": chosen["series_uid"], "dicom_files": files, "series_description": chosen["description"],
            READER_NOTES: notes}
    volume = Volume.from_sitk(image, str(folder), meta)
    _padding_to_air(volume, [padding.get(f) for f in files], notes)
    return volume


#: Metadata key of what the reader did on its own (files ignored, images left out, padding filled): said to the user.
READER_NOTES = "reader_notes"
AIR_HU = -1000.0


def _padding_to_air(volume: Volume, padding_hu: list, notes: list[str]) -> None:
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


def _report_unreadable_files(folder: Path, entries: list[Path], series: list[dict]) -> list[str]:
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


def read_volume(path: str | Path, series_uid: str | None = None, check_hu: bool = True) -> Volume:
    """Read a CT volume; DICOM folders are checked for modality, missing slices, uneven spacing and tilt."""
    path = Path(path)
    _check_readable(path)
    if path.name.upper() == "DICOMDIR" and path.is_file():
        path = path.parent  # the file-set's root folder is meant
    if path.is_dir():
        volume = _read_dicom_folder(path, series_uid)
    else:
        suffix = _suffix(path)
        if (suffix in (".dcm", ".ima") or suffix == "") and _is_enhanced_ct(path):
            volume = _read_enhanced_ct(path)  # one file is the whole volume
            if check_hu:
                check_hu_volume(volume, path)
            return volume
        if suffix in (".dcm", ".ima") or suffix == "":
            raise InputError(path, _single_file_problem(path))
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
    suffix = _suffix(path)
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
