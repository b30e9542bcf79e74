"""Acquisitions that real archives hold beyond axial LPS slices: sagittal and coronal series, NIfTI files with
flipped rows (dcm2niix writes RAS), left-handed grids. The network sees every one of them in axial LPS voxel order."""

import itertools
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from conftest import chest_like, debian_tool, rewrite_series, variant, write_dicom_series
from SyntheticContrastLib.errors import InputError, SeriesSelectionError
from SyntheticContrastLib.io import rules
from SyntheticContrastLib.trust import ood
from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
from SyntheticContrastLib.engine.models import load_model
from SyntheticContrastLib.io.orientation import AxialLayout
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import READER_NOTES, Volume
from SyntheticContrastLib.io.dicom_export import write_dicom_file

ORIENTATIONS = [  # SimpleITK's DICOMOrient codes: the patient direction each index axis (x, y, z) runs towards
    "LPS", "RAS", "RPI", "LAS",  # axial, with flips (RAS is what dcm2niix NIfTI files hold)
    "PSL", "ASR", "PIR",  # sagittal: in-plane axes posterior/anterior and superior/inferior
    "LSP", "RIA", "LIP",  # coronal
]


def axial_volume(shape=(16, 40, 36), seed=0) -> Volume:
    return Volume(np.round(chest_like(shape, seed)), (0.8, 0.7, 2.0), (-14.0, -30.0, 5.0))


def reoriented(volume: Volume, code: str) -> Volume:
    """The same anatomy stored in another voxel order, made by SimpleITK (the reference for the geometry)."""
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), code))


@pytest.mark.parametrize("code", ORIENTATIONS)
def test_every_acquisition_plane_maps_onto_the_same_axial_voxels_and_back(code):
    axial = axial_volume()
    other = reoriented(axial, code)
    layout = AxialLayout.of(other.direction)
    assert np.array_equal(layout.to_axial(other.array), axial.array)
    assert np.allclose(layout.spacing(other.spacing), axial.spacing)
    assert np.array_equal(layout.back(layout.to_axial(other.array)), other.array)
    assert layout.is_identity == (code == "LPS")


@pytest.mark.parametrize("angle", [0.2, 0.7853981])  # a small tilt of the axes, and the 45-degree tie
def test_an_oblique_grid_goes_to_its_nearest_axes_as_a_permutation(angle):
    c, s = np.cos(angle), np.sin(angle)
    for perm in itertools.permutations(range(3)):
        d = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])[:, perm]
        layout = AxialLayout.of(d.ravel())
        assert sorted(layout.axes) == [0, 1, 2]
        array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
        assert np.array_equal(layout.back(layout.to_axial(array)), array)


@pytest.mark.parametrize("code", ["RAS", "PSL", "LSP"])
@variant("oblique, sagittal, coronal acquisition")
def test_a_sagittal_coronal_or_ras_input_is_synthesised_as_its_axial_twin(tiny_model_card, code):
    """Before, the network ran on sagittal or mirrored slabs as if they were axial LPS ones, so the same anatomy
    gave another sCECT: a result that looks plausible and is wrong."""
    model = load_model(tiny_model_card, device="cpu")
    axial = axial_volume()
    other = reoriented(axial, code)
    expected, _ = synthesize_volume(axial, model, SynthesisOptions(device="cpu"))
    result, report = synthesize_volume(other, model, SynthesisOptions(device="cpu"))
    assert result.direction == other.direction and result.origin == other.origin
    layout = AxialLayout.of(other.direction)
    assert np.allclose(layout.to_axial(result.array), expected.array, atol=1e-3)
    assert any("axial LPS voxel order" in n for n in report.notes)


def test_a_sagittal_dicom_series_is_read_and_measured_like_the_axial_one(tmp_path):
    axial = axial_volume((12, 24, 20))
    sagittal = reoriented(axial, "PSL")
    d = np.asarray(sagittal.direction).reshape(3, 3)
    write_dicom_series(tmp_path / "sag", sagittal.array, spacing=sagittal.spacing, direction=d,
                       positions=[k * sagittal.spacing[2] for k in range(sagittal.array.shape[0])])
    read = read_volume(tmp_path / "sag")
    assert np.allclose(np.asarray(read.direction).reshape(3, 3), d, atol=1e-6)
    assert np.array_equal(AxialLayout.of(read.direction).to_axial(read.array), axial.array)
    measured, expected = ood.measure(read), ood.measure(axial)
    # pytest 9.2's approx refuses a dict that holds a list: the histogram is compared on its own.
    assert measured.pop("hu_histogram") == pytest.approx(expected.pop("hu_histogram"))
    assert measured == pytest.approx(expected)


# --- DICOM series as scanners and PACS write them --------------------------------------------------------------

HU = np.round(chest_like((12, 24, 20)))


@pytest.fixture
def reference(tmp_path):
    return read_volume(write_dicom_series(tmp_path / "reference", HU, spacing=(0.8, 0.7, 2.0))[0].parent)


@variant("descending z, shuffled file names and InstanceNumbers")
def test_order_comes_from_positions_not_names_or_instance_numbers(tmp_path, reference):
    files = write_dicom_series(tmp_path / "shuffled", HU[::-1], spacing=(0.8, 0.7, 2.0),
                               positions=[2.0 * k for k in range(12)][::-1])  # written top slice first
    order = np.random.default_rng(3).permutation(len(files))
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(order[k]) + 1  # numbers that say nothing about position
        write_dicom_file(path.with_name(f"IM{order[k]:05d}"), ds)
        path.unlink()
    volume = read_volume(tmp_path / "shuffled")
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.origin == reference.origin and volume.spacing == reference.spacing


@variant("unsigned storage, per-slice rescale, slope other than 1")
def test_each_slice_is_decoded_with_its_own_rescale_signed_or_unsigned(tmp_path, reference):
    files = write_dicom_series(tmp_path / "rescaled", HU, spacing=(0.8, 0.7, 2.0))
    expected = np.empty_like(HU)

    def change(k, ds):
        unsigned = k % 3 == 0  # unsigned slices store HU + 2048, so air stays positive
        slope, intercept = (1.0, -2048.0) if unsigned else (0.5, -1100.0 - k) if k % 2 else (2.0, -2048.0)
        stored = np.round((HU[k] - intercept) / slope)
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.astype(np.uint16 if unsigned else np.int16).tobytes()
        expected[k] = stored * slope + intercept

    rewrite_series(files, change)
    volume = read_volume(tmp_path / "rescaled")
    np.testing.assert_allclose(volume.array, expected, atol=1e-3)
    assert np.abs(volume.array - reference.array).max() <= 1.0  # the quantisation of slope 2


@variant("thin slices with rounded positions")
def test_thin_slices_whose_positions_were_rounded_are_read_on_their_even_grid(tmp_path):
    """0.625 mm slices written with one decimal (0.6, 1.3, 1.9, ...): steps of 0.6 and 0.7 mm. Before, this was
    refused as 'uneven slice spacing (0.600 to 0.700 mm)'."""
    hu = np.round(chest_like((16, 24, 20)))
    write_dicom_series(tmp_path / "thin", hu, spacing=(0.8, 0.7, 0.625), positions=[round(k * 0.625, 1) for k in range(16)])
    volume = read_volume(tmp_path / "thin")
    assert volume.spacing[2] == pytest.approx(0.625, abs=0.005)
    assert any("written to 0.1 mm" in n and "even grid of 0.62" in n for n in volume.metadata[READER_NOTES])
    # Really uneven steps written with the same precision stay refused.
    write_dicom_series(tmp_path / "uneven", hu[:8], spacing=(0.8, 0.7, 0.625), positions=[0, 0.6, 1.3, 1.9, 2.5, 3.4, 3.8, 4.4])
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_volume(tmp_path / "uneven")


def _extra_series(folder, like, description, image_type=None, sop_class=None, images=2, orientation=None):
    series_uid = generate_uid()
    for k in range(images):
        ds = pydicom.dcmread(like)
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = series_uid, description, 90 + k
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if image_type:
            ds.ImageType = image_type
        if sop_class:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        if orientation:
            ds.ImageOrientationPatient = orientation
        write_dicom_file(folder / f"{description.replace(' ', '_')}{k}.dcm", ds)


def _dose_report(folder, study_uid):
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", study_uid, generate_uid()
    ds.SeriesDescription = "Dose Report"
    write_dicom_file(folder / "dose_report.dcm", ds)


@variant("localizer, dose report or screen-capture series beside the CT")
def test_localizer_dose_report_and_dose_screen_series_do_not_hide_the_ct(tmp_path, reference):
    """Before, a scanner's study folder (CT + topogram + dose report + dose screen) asked for --series."""
    files = write_dicom_series(tmp_path / "study", HU, spacing=(0.8, 0.7, 2.0), description="Thorax 2mm")
    _extra_series(tmp_path / "study", files[0], "Topogram", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"], orientation=[1, 0, 0, 0, 0, -1])
    _extra_series(tmp_path / "study", files[0], "Dose Info", sop_class="1.2.840.10008.5.1.4.1.1.7", images=1)
    _dose_report(tmp_path / "study", pydicom.dcmread(files[0]).StudyInstanceUID)
    volume = read_volume(tmp_path / "study")
    np.testing.assert_array_equal(volume.array, reference.array)
    notes = volume.metadata[READER_NOTES]
    assert any("Topogram (2 images): a localizer series; left out" in n for n in notes)
    assert any("Dose Info (1 images): screen captures" in n for n in notes)
    assert any("dose_report.dcm: SR object without pixels (Dose Report); ignored" in n for n in notes)
    # Two CT image series (a lung and a soft-tissue kernel) still need a choice, and the list says each kind.
    for path in write_dicom_series(tmp_path / "lung", HU, spacing=(0.8, 0.7, 2.0), description="Lung 2mm"):
        path.rename(tmp_path / "study" / f"lung_{path.name}")
    with pytest.raises(SeriesSelectionError) as err:
        read_volume(tmp_path / "study")
    assert "holds 4 DICOM series" in str(err.value) and "[a localizer series]" in str(err.value) and str(err.value).count("[CT images]") == 2


@pytest.mark.parametrize("encode,tolerance", [("--encode-lossless-sv1", 0), ("--encode-lossless", 0), ("--encode-extended", 60)])
@variant("JPEG, JPEG-LS, JPEG 2000, RLE transfer syntaxes")
def test_jpeg_lossless_and_extended_series_written_by_dcmtk_are_read(tmp_path, encode, tolerance):
    """JPEG process 14 (SV1 and any predictor) and the 12-bit extended process: what older PACS and CDs hold.
    pydicom cannot encode them; dcmtk's dcmcjpeg does. Extended JPEG is lossy, hence its tolerance in HU."""
    tool = debian_tool("dcmcjpeg", "dcmtk")
    hu = np.clip(np.round(chest_like((6, 64, 64))), -1024, 3071)  # what 12 bits hold
    plain = read_volume(write_dicom_series(tmp_path / "plain", hu)[0].parent)
    files = write_dicom_series(tmp_path / "jpeg", hu)
    # 12 bits unsigned, as CT is stored for the extended (12-bit) process: stored = HU + 1024 in 0..4095.
    rewrite_series(files, lambda k, ds: (setattr(ds, "PixelRepresentation", 0), setattr(ds, "BitsStored", 12), setattr(ds, "HighBit", 11),
                                   setattr(ds, "PixelData", np.clip(hu[k] + 1024, 0, 4095).astype(np.uint16).tobytes())))
    for path in files:
        subprocess.run([tool, encode, str(path), str(path)], check=True, capture_output=True, timeout=60)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID.is_compressed
    volume = read_volume(tmp_path / "jpeg")
    assert np.abs(volume.array - plain.array).max() <= tolerance
    assert volume.origin == plain.origin and volume.spacing == plain.spacing


# --- NIfTI, NRRD and MetaImage files as converters write them ---------------------------------------------------

def _patch(path, offset, fmt, *values):
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


@variant("NIfTI whose sform and qform differ")
def test_a_nifti_whose_sform_and_qform_disagree_is_read_with_the_sform_and_said(tmp_path):
    path = tmp_path / "forms.nii"
    write_volume(axial_volume(), path)
    _patch(path, 280 + 12, "f", 40.0)  # srow_x's offset: the sform now starts 40 mm away (before: no word said)
    volume = read_volume(path)
    assert volume.origin[0] == pytest.approx(-40.0)  # LPS x = -RAS x: the sform, as ITK and Slicer read it
    (note,) = volume.metadata[READER_NOTES]
    assert "forms.nii: sform and qform differ (origin by 26.00 mm" in note and "read with the sform" in note
    write_volume(axial_volume(), tmp_path / "agree.nii")
    assert READER_NOTES not in read_volume(tmp_path / "agree.nii").metadata


@variant("NIfTI with a left-handed affine")
def test_a_left_handed_nifti_keeps_its_grid_and_is_synthesised_as_its_axial_twin(tmp_path, tiny_model_card):
    axial = axial_volume()
    left_handed = reoriented(axial, "LAS")
    assert np.linalg.det(np.asarray(left_handed.direction).reshape(3, 3)) < 0
    write_volume(left_handed, tmp_path / "lh.nii.gz")
    read = read_volume(tmp_path / "lh.nii.gz")
    np.testing.assert_allclose(read.direction, left_handed.direction, atol=1e-6)
    np.testing.assert_allclose(read.origin, left_handed.origin, atol=1e-4)
    assert READER_NOTES not in read.metadata  # ITK writes qfac = -1, so the two forms agree
    model = load_model(tiny_model_card, device="cpu")
    expected, _ = synthesize_volume(axial, model, SynthesisOptions(device="cpu"))
    result, _ = synthesize_volume(read, model, SynthesisOptions(device="cpu"))
    np.testing.assert_allclose(AxialLayout.of(read.direction).to_axial(result.array), expected.array, atol=1e-3)


@variant("NIfTI scl_slope and scl_inter")
def test_nifti_scaling_is_applied(tmp_path):
    path = tmp_path / "scaled.nii"
    stored = ((HU + 1024) / 2).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(stored), str(path))
    _patch(path, 112, "2f", 2.0, -1024.0)  # scl_slope, scl_inter, as dcm2niix writes them
    np.testing.assert_allclose(read_volume(path).array, stored * 2.0 - 1024.0)


@variant("raw values, not HU (no intercept)")
def test_raw_stored_values_without_intercept_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "raw.nii"
    sitk.WriteImage(sitk.GetImageFromArray((HU + 1024).astype(np.int16)), str(path))  # stored values, no scl
    with pytest.raises(InputError, match=r"raw.nii: intensities do not look like Hounsfield units .*set scl_slope and scl_inter"):
        read_volume(path)


@variant("4D volume with one time point")
def test_a_4d_file_with_one_time_point_is_read_and_with_several_refused(tmp_path):
    for points in (1, 3):
        path = tmp_path / f"t{points}.nii"
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(HU)] * points), str(path))
        if points == 1:
            _patch(path, 40, "5h", 4, 20, 24, 12, 1)  # dim[0] = 4 with one time point, as some converters write
            np.testing.assert_array_equal(read_volume(path).array, HU)
        else:
            with pytest.raises(InputError, match=r"t3.nii: is a 4D image with 3 time points; give one 3D CT volume"):
                read_volume(path)


@variant("NRRD in RAS (or any) space, MetaImage")
def test_nrrd_in_ras_space_and_metaimage_land_in_lps(tmp_path):
    stored = HU.astype(np.int16)
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\nsizes: 20 24 12\n"
              "space directions: (-0.8,0,0) (0,-0.7,0) (0,0,2)\nkinds: domain domain domain\nendian: little\n"
              "encoding: raw\nspace origin: (10,20,30)\n\n")
    (tmp_path / "ras.nrrd").write_bytes(header.encode() + stored.tobytes())
    volume = read_volume(tmp_path / "ras.nrrd")
    assert volume.origin == pytest.approx((-10.0, -20.0, 30.0))  # RAS (10, 20, 30) is LPS (-10, -20, 30)
    np.testing.assert_allclose(np.asarray(volume.direction).reshape(3, 3), np.eye(3), atol=1e-9)  # -R is L, -A is P
    np.testing.assert_array_equal(volume.array, HU)
    (tmp_path / "ct.raw").write_bytes(stored.tobytes())
    (tmp_path / "ct.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 20 24 12\nElementType = MET_SHORT\n"
                                     "ElementSpacing = 0.8 0.7 2\nOffset = -10 -20 30\nAnatomicalOrientation = RAI\n"
                                     "TransformMatrix = 1 0 0 0 1 0 0 0 1\nElementDataFile = ct.raw\n")
    mhd = read_volume(tmp_path / "ct.mhd")
    assert mhd.origin == volume.origin and mhd.spacing == pytest.approx((0.8, 0.7, 2.0))
    np.testing.assert_array_equal(mhd.array, HU)


def test_every_rule_has_a_test_and_the_readme_shows_the_table():
    """The rule table (io/rules.py) and the tests stay one: a rule without a test, or a test naming a rule that is
    not in the table, fails here; so does a README table that no longer says what the code does."""
    named = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        named |= set(re.findall(r'variant\("([^"]+)"\)', path.read_text()))
    variants = {r.variant for r in rules.RULES}
    assert named - variants == set(), "tests name variants the rule table lacks"
    assert variants - named == set(), "rules without a test"
    assert rules.markdown_table() in (Path(__file__).parents[1] / "docs" / "batch-and-inputs.md").read_text()
