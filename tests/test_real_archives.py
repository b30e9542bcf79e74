"""What hospital archives and CDs really hold: stray files, scouts and padding in a series, and synthetic volumes
whose grid must be checked against the source series before a derived series is filed beside it."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import chest_like, dicom_validation_errors, rewrite_series, variant, write_dicom_series
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.io.dicom_export import on_source_grid
from SyntheticContrastLib.errors import InputError
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import READER_NOTES, Volume
from SyntheticContrastLib.io.dicom_export import write_dicom_file


@pytest.fixture
def series(tmp_path):
    files = write_dicom_series(tmp_path / "ct", np.round(chest_like((12, 24, 20))), spacing=(0.8, 0.7, 2.0), description="Chest")
    return tmp_path / "ct", files


@variant("stray non-DICOM files")
def test_stray_non_dicom_files_in_a_series_folder_are_ignored_and_said(series, tmp_path, tiny_model_card, capsys):
    folder, files = series
    (folder / "README.txt").write_text("exported by PACS")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 600)
    (folder / "VERSION").write_text("3.1")
    volume = read_volume(folder)
    assert volume.array.shape == (12, 24, 20)
    assert sorted(n.split(":")[0] for n in volume.metadata[READER_NOTES]) == ["README.txt", "Thumbs.db", "VERSION"]
    code = main(["synthesize", str(folder), str(tmp_path / "x_synthetic.nrrd"), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"])
    assert code == 0 and "note: README.txt: not a DICOM file; ignored" in capsys.readouterr().err
    (folder / "slice_broken.dcm").write_bytes(b"\x00" * 200)  # named as DICOM: still an error that names it
    with pytest.raises(InputError, match="slice_broken.dcm"):
        read_volume(folder)


@variant("localizer image inside the CT series")
def test_a_localizer_filed_in_the_ct_series_is_left_out(series):
    folder, files = series
    scout = pydicom.dcmread(files[0])
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal scout
    write_dicom_file(folder / "scout.dcm", scout)
    volume = read_volume(folder)
    assert volume.array.shape == (12, 24, 20)
    assert any("scout.dcm" in n and "LOCALIZER" in n for n in volume.metadata[READER_NOTES])


def _pad_corner(files, slope=None):
    """Store a 3 x 3 corner of every slice as PixelPaddingValue -32768, optionally with another rescale slope."""

    def pad(k, ds):
        pixels = ds.pixel_array.copy()
        pixels[:3, :3] = -32768
        ds.PixelData = pixels.tobytes()
        ds.add_new(0x00280120, "SS", -32768)  # PixelPaddingValue; signed pixels make it SS
        if slope is not None:
            ds.RescaleSlope = slope

    rewrite_series(files, pad)


@variant("padding (PixelPaddingValue)")
def test_padding_outside_the_field_of_view_becomes_air(series):
    folder, files = series
    _pad_corner(files)
    volume = read_volume(folder)
    assert (volume.array[:, :3, :3] == -1000.0).all() and volume.array.min() >= -1100
    assert any("PixelPaddingValue" in n and f"{12 * 9} voxels" in n for n in volume.metadata[READER_NOTES])


def test_padding_is_found_through_the_rescale_slope_not_only_the_intercept(series):
    folder, files = series
    _pad_corner(files, slope=2)  # stored -32768 is then -32768 x 2 - 1024 = -66560 HU: only that value is padding
    volume = read_volume(folder, check_hu=False)
    assert (volume.array[:, :3, :3] == -1000.0).all()
    assert any(f"{12 * 9} voxels were padding" in n for n in volume.metadata[READER_NOTES])


def test_a_flipped_synthetic_volume_is_put_back_on_the_source_grid_and_a_shifted_one_refused(series):
    folder, files = series
    source = read_volume(folder)
    synthetic = source.with_array(source.array + 100.0, **{"SyntheticContrast.synthetic": "true"})
    # The same voxels written with z and x reversed, as another tool's NIfTI may store them.
    flipped_dir = np.asarray(source.direction, float).reshape(3, 3).copy()
    flipped_dir[:, 0] *= -1
    flipped_dir[:, 2] *= -1
    corner = source.index_to_physical((source.array.shape[2] - 1, 0, source.array.shape[0] - 1))
    flipped = Volume(synthetic.array[::-1, :, ::-1].copy(), source.spacing, tuple(corner), tuple(flipped_dir.ravel()), dict(synthetic.metadata))
    back = on_source_grid(flipped, source)
    np.testing.assert_allclose(back.array, synthetic.array)
    assert back.origin == source.origin and back.direction == source.direction

    shifted = Volume(synthetic.array, source.spacing, tuple(np.asarray(source.origin) + [0, 0, 2.0]), source.direction)
    with pytest.raises(InputError, match=r"does not lie on the source series' grid: origin .*off by 2\.000"):
        on_source_grid(shifted, source)
    with pytest.raises(InputError, match=r"grid \(11, 24, 20\)"):
        on_source_grid(Volume(synthetic.array[1:], source.spacing, source.origin, source.direction), source)


def test_exported_series_from_a_flipped_nrrd_has_the_source_geometry_and_validates(series, tmp_path, tiny_model_card):
    folder, files = series
    out = tmp_path / "ct_synthetic.nrrd"
    assert main(["synthesize", str(folder), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--no-progress"]) == 0
    made = read_volume(out, check_hu=False)
    flipped_dir = np.asarray(made.direction, float).reshape(3, 3).copy()
    flipped_dir[:, 2] *= -1
    last = made.index_to_physical((0, 0, made.array.shape[0] - 1))
    flipped = Volume(made.array[::-1].copy(), made.spacing, tuple(last), tuple(flipped_dir.ravel()), dict(made.metadata))
    write_volume(flipped, tmp_path / "flipped_synthetic.nrrd")
    assert main(["export-dicom", str(tmp_path / "flipped_synthetic.nrrd"), str(folder), str(tmp_path / "dicom")]) == 0
    exported = sorted((tmp_path / "dicom").glob("*.dcm"), key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    sources = {tuple(np.round(np.array(pydicom.dcmread(f).ImagePositionPatient, float), 3)): f for f in files}
    for path in exported:
        ds = pydicom.dcmread(path)
        position = tuple(np.round(np.array(ds.ImagePositionPatient, float), 3))
        assert position in sources, "a synthetic slice was filed at a position the source does not have"
        src = pydicom.dcmread(sources[position])
        np.testing.assert_allclose(np.array(ds.ImageOrientationPatient, float), np.array(src.ImageOrientationPatient, float), atol=1e-6)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert dicom_validation_errors(tmp_path / "dicom") == []


@variant("one DICOM slice given instead of its folder")
def test_a_single_slice_given_instead_of_its_folder_points_to_the_folder(series, tmp_path):
    folder, files = series
    with pytest.raises(InputError, match=r"is one DICOM slice, not a volume; give the folder that holds its series instead: .*ct \(12 files"):
        read_volume(files[3])
    (tmp_path / "notes").write_text("not an image")
    with pytest.raises(InputError, match="neither DICOM nor a NIfTI/NRRD/MHA volume"):
        read_volume(tmp_path / "notes")


@variant("DICOM file named by UID, with no extension")
def test_a_slice_named_by_its_uid_is_known_as_dicom_by_its_content(series, tmp_path):
    """Siemens archives name files 'CT.1.3.12.2...': the last dotted number looked like an unsupported extension."""
    folder, files = series
    named = folder / "CT.1.3.12.2.1107.5.1.4.30000022120808113428000016573"
    files[3].rename(named)
    with pytest.raises(InputError, match=r"CT\.1\.3\.12.*573: is one DICOM slice, not a volume; give the folder that holds its "
                                         r"series instead: .*ct \(12 files"):
        read_volume(named)
    assert read_volume(folder).array.shape[0] == 12  # the folder itself reads, names and all


def test_a_lone_2d_slice_is_not_pointed_to_a_folder_that_would_be_refused_too(tmp_path):
    (path,) = write_dicom_series(tmp_path / "one", np.round(chest_like((1, 24, 24))))
    with pytest.raises(InputError, match="is a single 2D DICOM image, and its folder holds no other image of its series"):
        read_volume(path)


@variant("private vendor compression")
def test_philips_pmsct_rle1_pixels_in_a_private_block_are_named(series, capsys):
    """Philips keeps PMSCT_RLE1-compressed pixels in a private block with no PixelData, so GDCM lists no series;
    the reader said only 'contains no DICOM series'."""
    folder, files = series
    for path in files:
        ds = pydicom.dcmread(path)
        raw = ds.PixelData
        del ds.PixelData
        ds.private_block(0x07A1, "PMSCT_RLE1", create=True).add_new(0x11, "OB", raw[: len(raw) // 3])
        ds.save_as(path)
    assert main(["synthesize", str(folder), str(folder.parent / "x_synthetic.nii.gz"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "slice000.dcm: is compressed with Philips' private PMSCT_RLE1 compression (private block (07A1,0010), no PixelData)" in err
    assert "decompress the series with the vendor's tools first" in err and "contains no DICOM series" not in err


@variant("private vendor compression")
def test_philips_private_compression_is_named(series):
    folder, files = series
    ds = pydicom.dcmread(files[5])
    ds.file_meta.TransferSyntaxUID = "1.3.46.670589.33.1.4.1"
    ds.save_as(files[5], implicit_vr=False, little_endian=True)
    with pytest.raises(InputError, match=r"slice005.dcm: is compressed with a private Philips codec \(transfer syntax 1\.3\.46\.670589\.33\.1\.4\.1\); decompress"):
        read_volume(folder)


@variant("DICOMDIR file-set (CD, PACS export)")
def test_a_cd_root_with_a_dicomdir_is_read_through_it(tmp_path):
    from pydicom.fileset import FileSet

    files = write_dicom_series(tmp_path / "src", np.round(chest_like((8, 24, 20))), description="Chest 2mm")
    scout = write_dicom_series(tmp_path / "scout", np.round(chest_like((2, 24, 20))), description="Topogram")
    fileset = FileSet()
    for path in files + scout:
        fileset.add(pydicom.dcmread(path))
    fileset.write(tmp_path / "cd")  # IMAGES in PT*/ST*/SE*/IM* without extensions, as on a CD
    with pytest.raises(InputError, match=r"holds 2 DICOM series; choose one with --series UID:[\s\S]*Chest 2mm[\s\S]*Topogram"):
        read_volume(tmp_path / "cd")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    volume = read_volume(tmp_path / "cd", series_uid=uid)
    direct = read_volume(tmp_path / "src")
    np.testing.assert_array_equal(volume.array, direct.array)
    assert volume.origin == pytest.approx(direct.origin) and any("DICOMDIR" in n for n in volume.metadata[READER_NOTES])
    assert read_volume(tmp_path / "cd" / "DICOMDIR", series_uid=uid).array.shape == (8, 24, 20)  # the file itself


def test_gdcm_and_itk_warnings_do_not_reach_the_terminal(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no images here")
    result = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "synthesize", str(tmp_path / "notes"),
                             str(tmp_path / "x_synthetic.nrrd")], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "SyntheticContrast")})
    assert result.returncode == 1 and "contains no DICOM series" in result.stderr
    assert "WARNING" not in result.stderr and "GDCMSeriesFileNames" not in result.stderr, result.stderr


def enhanced_ct(path, hu, spacing=(0.8, 0.7, 2.0), origin=(-10.0, -20.0, 0.0), per_frame_rescale=False):
    """An Enhanced CT Image Storage object written with pydicom: one file, a frame per slice, frames stored in
    reverse z order, geometry and rescale in the functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    n = hu.shape[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Enhanced", "E1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, hu.shape[1], hu.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [spacing[1], spacing[0]], spacing[2]
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    stored = []
    per_frame = []
    for k in reversed(range(n)):  # frames in reverse z order: the reader must sort them
        frame, position, transform = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        slope = 2.0 if per_frame_rescale and k % 2 else 1.0
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, -1024, "HU"
        frame.PlanePositionSequence, frame.PixelValueTransformationSequence = [position], [transform]
        per_frame.append(frame)
        stored.append(np.round((hu[k] + 1024) / slope).astype(np.int16))
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = [shared], per_frame
    ds.PixelData = np.stack(stored).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom_file(path, ds)
    return path


@variant("Enhanced CT (multi-frame)")
def test_an_enhanced_ct_object_is_read_like_the_classic_series(tmp_path):
    hu = np.round(chest_like((10, 24, 20)))
    write_dicom_series(tmp_path / "classic", hu, spacing=(0.8, 0.7, 2.0))
    classic = read_volume(tmp_path / "classic")
    for per_frame in (False, True):
        path = enhanced_ct(tmp_path / f"enhanced{per_frame}" / "ct.dcm", hu, per_frame_rescale=per_frame)
        for given in (path.parent, path):  # its folder, or the one file
            volume = read_volume(given)
            np.testing.assert_allclose(volume.array, classic.array, atol=1.0 if per_frame else 0)
            np.testing.assert_allclose(volume.spacing, classic.spacing, atol=1e-6)
            np.testing.assert_allclose(volume.origin, classic.origin, atol=1e-6)
            np.testing.assert_allclose(volume.direction, classic.direction, atol=1e-9)
            assert any("Enhanced CT object of 10 frames" in n for n in volume.metadata[READER_NOTES])


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
@variant("JPEG, JPEG-LS, JPEG 2000, RLE transfer syntaxes")
def test_compressed_series_read_like_the_uncompressed_one(tmp_path, syntax):
    import pydicom.uid

    pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg (test extra) encodes the JPEG 2000 fixture")
    pytest.importorskip("jpeg_ls", reason="pyjpegls (test extra) encodes the JPEG-LS fixture")
    hu = np.round(chest_like((8, 64, 64)))  # openjpeg's default resolution levels need at least 32 px a side
    write_dicom_series(tmp_path / "plain", hu)
    files = write_dicom_series(tmp_path / "compressed", hu)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(path)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    volume, plain = read_volume(tmp_path / "compressed"), read_volume(tmp_path / "plain")
    np.testing.assert_array_equal(volume.array, plain.array)
    assert volume.origin == plain.origin and volume.spacing == plain.spacing


@variant("source series without StudyInstanceUID")
def test_a_source_without_study_instance_uid_is_refused_not_exported_empty(series, tmp_path):
    from SyntheticContrastLib.io.dicom_export import export_dicom_series, source_files_of

    folder, files = series
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = ""
        ds.save_as(path)
    source = read_volume(folder)
    with pytest.raises(InputError, match="slice000.dcm: has no StudyInstanceUID"):
        export_dicom_series(source, tmp_path / "out", source_files_of(source), "m", "0" * 64)
    assert not (tmp_path / "out").exists()


def test_synthesize_refuses_an_export_it_cannot_make_before_any_synthesis(series, tmp_path, capsys):
    """It used to write the NIfTI and spend the synthesis time, then refuse the DICOM export: half done."""
    folder, files = series
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = ""
        ds.save_as(path)
    out = tmp_path / "x_synthetic.nii.gz"
    rc = main(["synthesize", str(folder), str(out), "--dicom-out", str(tmp_path / "dicom"), "--progress-json"])
    captured = capsys.readouterr()
    assert rc == 1 and "has no StudyInstanceUID" in captured.err
    assert '"event": "progress"' not in captured.out  # not one window was synthesised
    assert not out.exists() and not (tmp_path / "dicom").exists()


def test_a_derived_series_from_an_enhanced_ct_references_each_frame_and_validates(tmp_path, tiny_model_card):
    """Before, the export referenced the multi-frame object once, for the first slice only, and no frame."""
    hu = np.round(chest_like((10, 24, 20)))
    source = enhanced_ct(tmp_path / "enhanced" / "ct.dcm", hu)  # frames stored in reverse z order
    assert main(["synthesize", str(source.parent), str(tmp_path / "ct_synthetic.nii.gz"), "--model", str(tiny_model_card),
                 "--device", "cpu", "--no-progress", "--dicom-out", str(tmp_path / "dicom")]) == 0
    header = pydicom.dcmread(source, stop_before_pixels=True)
    frame_z = {k + 1: float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for k, f in enumerate(header.PerFrameFunctionalGroupsSequence)}
    exported = [pydicom.dcmread(p) for p in sorted((tmp_path / "dicom").glob("*.dcm"))]
    assert len(exported) == 10
    for ds in exported:
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
        assert frame_z[int(ref.ReferencedFrameNumber)] == pytest.approx(float(ds.ImagePositionPatient[2]), abs=1e-4)
        assert ds.StudyInstanceUID == header.StudyInstanceUID and ds.FrameOfReferenceUID == header.FrameOfReferenceUID
    assert sorted(int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in exported) == list(range(1, 11))
    assert dicom_validation_errors(tmp_path / "dicom") == []


def test_a_synthetic_volume_in_axial_order_goes_back_onto_a_sagittal_source(tmp_path, tiny_model_card):
    """A sagittal source, and an sCECT that another tool saved reoriented to axial: the axes are permuted, not only
    flipped. Before, export-dicom refused it (or, for a flip-only search, could not find the source's grid)."""
    import SimpleITK as sitk

    axial = Volume(np.round(chest_like((12, 24, 20))), (0.8, 0.7, 2.0), (-10.0, -20.0, 0.0))
    sagittal = Volume.from_sitk(sitk.DICOMOrient(axial.to_sitk(), "PSL"))
    d = np.asarray(sagittal.direction).reshape(3, 3)
    files = write_dicom_series(tmp_path / "sag", sagittal.array, spacing=sagittal.spacing, direction=d,
                               positions=[k * sagittal.spacing[2] for k in range(sagittal.array.shape[0])])
    source = read_volume(tmp_path / "sag")
    assert main(["synthesize", str(tmp_path / "sag"), str(tmp_path / "s_synthetic.nrrd"), "--model", str(tiny_model_card),
                 "--device", "cpu", "--no-progress"]) == 0
    made = read_volume(tmp_path / "s_synthetic.nrrd", check_hu=False)
    axial_made = Volume.from_sitk(sitk.DICOMOrient(made.to_sitk(), "LPS"), metadata=made.metadata)
    write_volume(axial_made, tmp_path / "axial_synthetic.nrrd")
    assert main(["export-dicom", str(tmp_path / "axial_synthetic.nrrd"), str(tmp_path / "sag"), str(tmp_path / "dicom")]) == 0
    back = on_source_grid(read_volume(tmp_path / "axial_synthetic.nrrd", check_hu=False), source)
    np.testing.assert_array_equal(back.array, made.array)
    sources = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    for path in (tmp_path / "dicom").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        src = pydicom.dcmread(sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID])
        np.testing.assert_allclose(np.array(ds.ImagePositionPatient, float), np.array(src.ImagePositionPatient, float), atol=1e-4)
        np.testing.assert_allclose(np.array(ds.ImageOrientationPatient, float), np.array(src.ImageOrientationPatient, float), atol=1e-6)
    assert dicom_validation_errors(tmp_path / "dicom") == []


@variant("a folder of assorted objects GDCM's scan throws on")
def test_pydicoms_own_test_folder_gives_one_line_and_no_foreign_messages(tmp_path):
    """78 objects of every kind (RT dose and plan, SR, broken JPEG 2000, big-endian, no meta): GDCM's series scan
    throws on one of them and its JPEG 2000 decoder prints to the terminal. The user sees one line naming a file."""
    import shutil
    import subprocess
    import sys

    import pydicom.data

    folder = tmp_path / "pydicom_test_files"
    folder.mkdir()
    for path in (Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"):
        shutil.copy(path, folder / path.name)
    res = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "synthesize", str(folder),
                          str(tmp_path / "o_synthetic.nii.gz"), "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}") and "is not a readable DICOM file" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and "tiles" not in res.stderr and not (tmp_path / "o_synthetic.nii.gz").exists()
