"""What the reader does with each kind of CT input that scanners, PACS exports, CDs and converters produce: one rule
per variant, what the user sees, and every tolerance the readers use. Change a rule here, and its test and the
table in docs/batch-and-inputs.md (``python -m SyntheticContrastLib.io.rules`` prints it) follow."""

from __future__ import annotations

from dataclasses import dataclass

#: Image orientation cosines of the slices of one series must agree to this.
ORIENTATION_ATOL = 1e-4
#: Two slices closer than this along the normal (mm) are duplicates.
DUPLICATE_STEP_MM = 1e-3
#: A step this many times the median step is a gap: slices are missing.
GAP_FACTOR = 1.5
#: Steps may differ by this share of the median step, or this many mm, whichever is larger.
UNEVEN_RELATIVE, UNEVEN_MM = 0.01, 0.01
#: Rounding of the written positions may explain uneven steps only when it is this fine against the spacing.
ROUNDING_SHARE_OF_SPACING = 0.1
#: Slices shifted off the normal by more than this share of the stack length (plus 0.1 mm) are a tilted gantry.
TILT_DEGREES, OFF_AXIS_SHARE, OFF_AXIS_MM = 0.01, 0.01, 0.1
#: A NIfTI's sform and qform disagreeing by more than this is reported.
NIFTI_FORM_TOLERANCE = {"origin_mm": 0.1, "direction": 1e-3}
#: The largest volume read, checked from the header before any allocation: 2048 x 2048 x 1024 voxels (16 GiB as the
#: engine's float32), twice a 1024 x 1024 x 2000 thin-slice CT.
MAX_VOXELS = 2048 * 2048 * 1024
#: The largest slice: 4096 x 4096 (a CT is 512 x 512, micro-CT and some cone-beam CT reach 2048 or 4096).
MAX_IN_PLANE = 4096


def check_voxel_budget(path, voxels: int, rows: int | None = None, columns: int | None = None) -> None:
    """Refuse a declared size beyond the reader's bounds before anything is allocated: a few header bytes must not be
    able to claim gigabytes."""
    from ..errors import InputError

    if rows is not None and columns is not None and max(rows, columns) > MAX_IN_PLANE:
        raise InputError(path, f"declares {rows} x {columns} pixels per slice; the reader's limit is {MAX_IN_PLANE} x {MAX_IN_PLANE}")
    if voxels > MAX_VOXELS:
        raise InputError(path, f"declares {voxels} voxels ({voxels * 4 / 2**30:.1f} GiB as float32); the reader's limit is "
                               f"{MAX_VOXELS} ({MAX_VOXELS * 4 / 2**30:.0f} GiB)")


@dataclass(frozen=True)
class Rule:
    variant: str
    rule: str
    user_sees: str


RULES = (
    Rule("classic CT series", "read with GDCM; slices ordered along the slice normal by ImagePositionPatient", "-"),
    Rule("Enhanced CT (multi-frame)", "read frame by frame from its functional groups; frames checked like slices",
         "note: ct.dcm: an Enhanced CT object of N frames, read frame by frame"),
    Rule("descending z, shuffled file names and InstanceNumbers",
         "order comes from the positions only; file names and InstanceNumber are not used", "-"),
    Rule("unsigned storage, per-slice rescale, slope other than 1",
         "each slice's (or frame's) own RescaleSlope and RescaleIntercept give its HU", "-"),
    Rule("gantry tilt", "refused: the slices do not stack on an orthogonal grid",
         "gantry tilt (X deg in the header, slices shifted Y mm off the normal); resample to an orthogonal grid first"),
    Rule("oblique, sagittal, coronal acquisition",
         "read with its direction; synthesised and measured in axial LPS voxel order (axes permuted and flipped, "
         "never resampled) and put back on its own grid", "note: synthesised in axial LPS voxel order (...)"),
    Rule("several image series in one folder", "refused until one is chosen; the message lists them",
         "holds N DICOM series; choose one with --series UID: (uid, slices, description, kind)"),
    Rule("localizer, dose report or screen-capture series beside the CT",
         "not candidates: when one CT image series remains it is read, and the others are named",
         "note: series Topogram (2 images): a localizer series; left out"),
    Rule("localizer image inside the CT series", "left out of the volume",
         "note: scout.dcm: a LOCALIZER (scout) image in the series; left out"),
    Rule("DICOMDIR file-set (CD, PACS export)", "the series list and file paths come from the DICOMDIR",
         "note: read the series list from .../DICOMDIR"),
    Rule("missing slices", "refused, naming where the gap is",
         "about N slice(s) missing: gap of X mm after slice K where spacing is Y mm"),
    Rule("uneven spacing", "refused beyond 1 % (or 0.01 mm)", "uneven slice spacing (A to B mm); resample to even spacing first"),
    Rule("thin slices with rounded positions",
         "accepted when every position lies on one even grid within the precision the positions were written with; "
         "the spacing is that grid's", "note: slice positions are written to 0.1 mm; read on an even grid of 0.625 mm (...)"),
    Rule("duplicate positions", "refused", "two slices share one position (duplicate slices, or two series mixed in one folder)"),
    Rule("padding (PixelPaddingValue)", "outside the field of view: filled as air, -1000 HU",
         "note: N voxels were padding (PixelPaddingValue), outside the field of view: filled as air (-1000 HU)"),
    Rule("stray non-DICOM files", "ignored", "note: README.txt: not a DICOM file; ignored"),
    Rule("a folder of assorted objects GDCM's scan throws on", "listed by pydicom instead, GDCM's and pydicom's own messages "
         "silenced; an unreadable DICOM file is named", "FILE: is not a readable DICOM file (InvalidDicomError); it sits in the series folder DIR"),
    Rule("JPEG, JPEG-LS, JPEG 2000, RLE transfer syntaxes", "decoded by GDCM (pylibjpeg for Enhanced CT)", "-"),
    Rule("private vendor compression", "refused by name: a private transfer syntax, or pixels in a private block "
         "(Philips PMSCT_RLE1) with no PixelData, which GDCM leaves out of every series",
         "is compressed with a private Philips codec (transfer syntax ...); decompress the series with the vendor's tools first"),
    Rule("DICOM file named by UID, with no extension", "known as DICOM by its content (the DICM preamble), whatever its name",
         "is one DICOM slice, not a volume; give the folder that holds its series instead: DIR (N files of its series are there)"),
    Rule("one DICOM slice given instead of its folder", "refused, pointing to the folder",
         "is one DICOM slice, not a volume; give the folder that holds its series instead: DIR (N files of its series are there)"),
    Rule("non-CT modality", "refused", "series modality is MR, not CT; synthetic contrast is defined only for CT"),
    Rule("NIfTI whose sform and qform differ", "the sform is used, as ITK and Slicer use it; the difference is said",
         "note: sform and qform differ (origin by X mm, axes by Y); read with the sform, as ITK and 3D Slicer do"),
    Rule("NIfTI with a left-handed affine", "read with its direction; processed in axial LPS voxel order", "-"),
    Rule("NIfTI scl_slope and scl_inter", "applied", "-"),
    Rule("truncated NIfTI, or a header claiming more voxels than the file holds",
         "refused before ITK reads it (ITK fills the missing voxels with 0 HU)",
         "is truncated: its header declares N bytes of image data, the file holds M"),
    Rule("NaN or infinite voxels", "refused, also in NIfTI (whose reader in ITK turns them into 0 HU)",
         "has N NaN or infinite voxels"),
    Rule("zero, negative or unparseable voxel spacing", "refused, naming the field (ITK and GDCM read it as 1 mm)",
         "has voxel spacing 0.0 along x (NIfTI pixdim); a CT needs a positive spacing"),
    Rule("a declared size beyond the reader's bounds", "refused from the header before any allocation",
         "declares 6000 x 6000 pixels per slice; the reader's limit is 4096 x 4096"),
    Rule("raw values, not HU (no intercept)", "refused",
         "intensities do not look like Hounsfield units (...); ... NIfTI: set scl_slope/scl_inter"),
    Rule("4D volume with one time point", "read as 3D; several time points are refused",
         "is a 4D image with N time points; give one 3D CT volume"),
    Rule("NRRD in RAS (or any) space, MetaImage", "converted to LPS by ITK on reading", "-"),
    Rule("source series without StudyInstanceUID", "export of a derived series refused",
         "has no StudyInstanceUID, so a derived series could not be filed in its study"),
)


def markdown_table() -> str:
    rows = ["| variant | rule | what the user sees |", "|---|---|---|"]
    rows += [f"| {r.variant} | {r.rule} | {r.user_sees} |" for r in RULES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
