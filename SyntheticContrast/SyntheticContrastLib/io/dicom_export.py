"""DICOM export of a synthetic volume as a new derived CT series beside (never into) its source series.

Patient, study and frame of reference come from the source; series and instance UIDs are new; the
series says SYNTHETIC in its description, ImageType is DERIVED\\SECONDARY, the derivation names the
model and its sha256, and no contrast/bolus attribute is written.
"""

from __future__ import annotations

import datetime as _dt
import itertools
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError
from ..fileio import atomic_dir
from .volume import Volume

SERIES_PREFIX = "SYNTHETIC CONTRAST - "
UNCERTAINTY_PREFIX = "SYNTHETIC UNCERTAINTY SD - "
IMAGE_COMMENT = "SYNTHETIC IMAGE - not acquired, not for diagnosis"
UNCERTAINTY_COMMENT = "SYNTHETIC UNCERTAINTY MAP - per-voxel SD in HU of the synthetic image's samples; not an image, not for diagnosis"
#: SD maps keep a tenth of a HU: the int16 pixels are stored with this rescale slope.
UNCERTAINTY_SLOPE = 0.1
# Identity of the patient and study, copied from the source so the series files under the same study.
COPIED_TAGS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer", "InstitutionName", "PatientPosition",
    "BodyPartExamined",
)
#: Type 2 attributes of the CT Image IOD's modules: present, empty when the source does not give a value.
TYPE2_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "PatientPosition", "PositionReferenceIndicator", "Manufacturer", "KVP",
    "AcquisitionNumber",
)


def export_dicom_series(volume: Volume, out_dir: str | Path, source_files: list[str] | None, model_id: str,
                        model_sha256: str, series_number_offset: int = 1000, uncertainty: bool = False,
                        findings: str = "", plausibility: str = "", incomplete: str = "") -> list[Path]:
    """Write ``volume`` (HU) as int16 CT slices with rescale slope 1, intercept 0; returns the files.

    ``uncertainty`` writes an SD map instead (its own description and comment, slope 0.1 HU); ``findings`` (the
    out-of-distribution summary), ``plausibility`` (the output's) and ``incomplete`` (why the input series may lack
    instances) are added to ImageComments so a PACS viewer shows them beside the image.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out_dir = Path(out_dir)
    check_export(out_dir, source_files)
    source_headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files or []]
    first = source_headers[0] if source_headers else None
    sources = source_images(source_headers)
    slope = UNCERTAINTY_SLOPE if uncertainty else 1.0
    hu = np.rint(volume.array / slope)
    if hu.min() < -32768 or hu.max() > 32767:
        raise ValueError("synthetic HU values do not fit in signed 16-bit pixels")
    comment = UNCERTAINTY_COMMENT if uncertainty else IMAGE_COMMENT
    if findings.startswith("not checked"):
        comment += f". Out-of-distribution checks: {findings}"
    elif findings and findings != "none":
        comment += f". OUT-OF-DISTRIBUTION WARNING: {findings}"
    if plausibility and not plausibility.startswith("none"):
        comment += f". IMPLAUSIBLE ENHANCEMENT WARNING: {plausibility}"
    if incomplete:
        comment += f". INCOMPLETE INPUT SERIES WARNING: {incomplete}; made from the instances that arrived"
    pixels = hu.astype(np.int16)
    series_uid = generate_uid()
    direction = np.asarray(volume.direction, float).reshape(3, 3)
    now = _dt.datetime.now()
    source_desc = str(first.get("SeriesDescription", "")) if first else ""
    source_series_number = int(first.get("SeriesNumber", 0) or 0) if first else 0
    study_uid = str(first.StudyInstanceUID) if first else generate_uid()
    frame_uid = str(first.FrameOfReferenceUID) if first and "FrameOfReferenceUID" in first else generate_uid()

    files = []
    try:
        with atomic_dir(out_dir) as staging:  # an empty out_dir (checked above) is replaced
            for k in range(pixels.shape[0]):
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = CTImageStorage
                meta.MediaStorageSOPInstanceUID = generate_uid()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = Dataset()
                ds.file_meta = meta
                for tag in COPIED_TAGS:
                    if first is not None and tag in first:
                        setattr(ds, tag, first.get(tag))
                if first is None:
                    ds.PatientName, ds.PatientID = "SYNTHETIC^UNKNOWN", "UNKNOWN"
                for tag in TYPE2_TAGS:
                    if tag not in ds:
                        setattr(ds, tag, None)  # Type 2: the attribute must be there, its value may be empty
                # Laterality is needed only for paired body parts; saying the (unpaired) chest lets validators see that.
                if not ds.get("BodyPartExamined"):
                    ds.BodyPartExamined = "CHEST"
                ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
                ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
                ds.SeriesInstanceUID = series_uid
                ds.Modality = "CT"
                ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # CT requires value 3: AXIAL (not LOCALIZER)
                ds.SeriesDescription = ((UNCERTAINTY_PREFIX if uncertainty else SERIES_PREFIX) + source_desc)[:64]
                ds.SeriesNumber = source_series_number + series_number_offset
                ds.InstanceNumber = k + 1
                ds.DerivationDescription = (
                    f"Synthetic contrast enhancement generated by SyntheticContrast model {model_id} "
                    f"(weights sha256 {model_sha256}). Not acquired; contrast was not administered."
                )
                ds.ImageComments = comment[:10240]
                ds.BurnedInAnnotation = "NO"
                ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
                ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
                position = volume.index_to_physical((0, 0, k))
                if sources:
                    ds.SourceImageSequence = [_source_at(sources, position, float(volume.spacing[2]), source_files[0], k)]
                ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
                ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
                ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[0]:.6f}"]  # row, column spacing
                ds.SliceThickness = f"{volume.spacing[2]:.6f}"
                ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
                ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, slope, "HU"
                ds.WindowCenter, ds.WindowWidth = (25, 50) if uncertainty else (50, 350)
                ds.PixelData = pixels[k].tobytes()
                path = staging / f"SYNTHETIC_{k + 1:04d}.dcm"
                write_dicom_file(path, ds)
                files.append(out_dir / path.name)
    except OSError as exc:
        raise OutputError(out_dir, f"writing the DICOM series failed: {exc.strerror or exc}") from exc
    return files


def source_images(headers) -> list[tuple[np.ndarray, object]]:
    """(position, Source Image Sequence item) of every source image: one per classic slice, one per frame of a
    multi-frame (Enhanced CT) object, which is referenced with its frame number."""
    from pydicom.dataset import Dataset

    from .enhanced_ct import frame_item

    images = []
    for ds in headers:
        frames = [None]
        if "PerFrameFunctionalGroupsSequence" in ds:
            frames = range(int(ds.NumberOfFrames))
        for frame in frames:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
            if frame is None:
                position = ds.get("ImagePositionPatient")
            else:
                position = frame_item(ds, frame, "PlanePositionSequence").ImagePositionPatient
                ref.ReferencedFrameNumber = frame + 1
            if position is not None:
                images.append((np.array([float(v) for v in position]), ref))
    return images


def _source_at(sources, position: np.ndarray, slice_spacing: float, where, k: int):
    """The source image at a derived slice's position: referencing by position, not by file order, holds for
    any sort order and for frames."""
    distances = [float(np.linalg.norm(p - position)) for p, _ in sources]
    nearest = int(np.argmin(distances))
    if distances[nearest] > 0.25 * slice_spacing:
        raise InputError(where, f"no source image lies at derived slice {k + 1}'s position {np.round(position, 3).tolist()} "
                         f"(nearest {distances[nearest]:.2f} mm away); the synthetic volume is not on the source grid")
    return sources[nearest][1]


#: How far a synthetic volume's grid may lie from its source series' grid (NIfTI keeps geometry in float32).
GRID_TOLERANCE = {"origin_mm": 0.05, "spacing_mm": 1e-3, "direction": 1e-4}


def on_source_grid(synthetic: Volume, source: Volume) -> Volume:
    """``synthetic`` expressed on ``source``'s grid, so the derived series has the source's geometry exactly.

    A volume that covers the same voxels in another order (axes flipped or permuted: a NIfTI written in another
    orientation) is put back in the source's order; any other difference in shape, origin, spacing or direction is
    refused with the figures, because a synthetic slice filed at the wrong position is worse than none.
    """
    if sorted(synthetic.array.shape) != sorted(source.array.shape):
        raise InputError(synthetic.source, f"grid {synthetic.array.shape} (z, y, x) differs from the source series {source.array.shape}")
    src_dir = np.asarray(source.direction, float).reshape(3, 3)
    old_dir, old_spacing = np.asarray(synthetic.direction, float).reshape(3, 3), np.asarray(synthetic.spacing, float)
    best = None
    for perm in itertools.permutations(range(3)):  # new array axis m is old array axis perm[m]
        for flips in itertools.product((False, True), repeat=3):
            array = np.transpose(synthetic.array, perm)[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
            if array.shape != source.array.shape:
                continue
            old_index_axis = [2 - perm[2 - i] for i in range(3)]  # new index axis i (x, y, z) <- old index axis
            direction = np.column_stack([old_dir[:, old_index_axis[i]] * (-1.0 if flips[2 - i] else 1.0) for i in range(3)])
            spacing = old_spacing[old_index_axis]
            corner = [0, 0, 0]  # the old (z, y, x) voxel that becomes the new first voxel
            for m in range(3):
                if flips[m]:
                    corner[perm[m]] = synthetic.array.shape[perm[m]] - 1
            origin = synthetic.index_to_physical(corner[::-1])
            gaps = (float(np.abs(origin - np.asarray(source.origin)).max()),
                    float(np.abs(spacing - np.asarray(source.spacing)).max()),
                    float(np.abs(direction - src_dir).max()))
            if best is None or gaps[2] + gaps[0] < best[1][2] + best[1][0]:
                best = (array, gaps, origin, spacing)
            if gaps[0] <= GRID_TOLERANCE["origin_mm"] and gaps[1] <= GRID_TOLERANCE["spacing_mm"] and gaps[2] <= GRID_TOLERANCE["direction"]:
                return source.with_array(np.ascontiguousarray(array), **synthetic.metadata)
    _, gaps, origin, spacing = best
    raise InputError(synthetic.source, (
        f"does not lie on the source series' grid: origin {np.round(origin, 3).tolist()} vs {np.round(source.origin, 3).tolist()} mm "
        f"(off by {gaps[0]:.3f}, tolerance {GRID_TOLERANCE['origin_mm']}), spacing {np.round(spacing, 4).tolist()} vs "
        f"{np.round(source.spacing, 4).tolist()} mm, direction off by {gaps[2]:.4f} (tolerance {GRID_TOLERANCE['direction']}); "
        "resample it onto the source grid, or export the series it was made from"))


def write_dicom_file(target, ds) -> None:
    """Write ``ds`` as a DICOM file (preamble, 'DICM', file meta) with the pydicom of the running Slicer: 2.4 (Slicer 5.6
    to 5.10) names this write_like_original=False, 3.x enforce_file_format=True, and refuses the other's name."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(target, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(target, ds, write_like_original=False)


def check_source_exportable(source_files) -> None:
    """A derived series must be filed in its source's study: refused before any synthesis if it cannot be."""
    if not source_files:
        return
    import pydicom

    first = pydicom.dcmread(source_files[0], stop_before_pixels=True)
    if not str(first.get("StudyInstanceUID", "") or "").strip():
        raise InputError(source_files[0], "has no StudyInstanceUID, so a derived series could not be filed in its study "
                         "(a PACS would file it nowhere); repair the source's study identity first")


def check_export(out_dir: Path, source_files) -> None:
    """Everything that would refuse the export, checked before the work it would waste: a new folder, outside the
    source series, and a source that has a study to file into."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputError(out_dir, "exists and is not empty; a synthetic series is written only into a new folder")
    if source_files:
        source_dirs = {Path(f).resolve().parent for f in source_files}
        if out_dir.resolve() in source_dirs or any(d in out_dir.resolve().parents for d in source_dirs):
            raise OutputError(out_dir, "is inside the source series folder; write the synthetic series beside it")
    check_source_exportable(source_files)


def source_files_of(volume: Volume) -> list[str] | None:
    """The DICOM files a volume was read from (sorted along the slice normal), if it came from DICOM."""
    files = volume.metadata.get("dicom_files")
    if files is None:
        return None
    if not files:
        raise InputError(volume.source, "has no DICOM files recorded")
    return list(files)
