"""DICOM export: a derived series in the source's study, marked synthetic, that round-trips within 1 HU."""

import hashlib

import numpy as np
import pydicom
import pytest

from conftest import chest_like, dicom_validation_errors, write_dicom_series
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.io.dicom_export import export_dicom_series, source_files_of
from SyntheticContrastLib.errors import OutputError
from SyntheticContrastLib.io.reading import read_volume


@pytest.fixture
def source(tmp_path):
    files = write_dicom_series(tmp_path / "ncct", np.round(chest_like((10, 24, 20))), spacing=(0.8, 0.7, 2.0),
                               description="Chest 2mm NC")
    return tmp_path / "ncct", files


def checksums(files):
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_export_is_a_derived_synthetic_series_in_the_same_study(tmp_path, source):
    folder, files = source
    before = checksums(files)
    src = read_volume(folder)
    synthetic = src.with_array(src.array + np.random.default_rng(0).uniform(-0.4, 300, src.array.shape).astype(np.float32))
    out = export_dicom_series(synthetic, tmp_path / "ncct_SYNTHETIC", source_files_of(src), "demo-model", "f" * 64)
    assert len(out) == 10 and checksums(files) == before
    src_ds = [pydicom.dcmread(f) for f in files]
    for path in out:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src_ds[0].StudyInstanceUID
        assert ds.FrameOfReferenceUID == src_ds[0].FrameOfReferenceUID
        assert ds.SeriesInstanceUID != src_ds[0].SeriesInstanceUID
        assert ds.SOPInstanceUID not in {d.SOPInstanceUID for d in src_ds}
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesDescription == "SYNTHETIC CONTRAST - Chest 2mm NC"
        assert ds.SeriesNumber == 1001
        assert "demo-model" in ds.DerivationDescription and "f" * 64 in ds.DerivationDescription
        assert ds.PixelRepresentation == 1 and ds.RescaleSlope == 1 and ds.RescaleIntercept == 0
        assert not [e.keyword for e in ds if "Contrast" in e.keyword or "Bolus" in e.keyword]
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in out}) == 10
    # dciodvfy's remaining warnings: Study Date, Study Time and Study ID are empty because this test's source
    # series has none (they are Type 2, copied from the source); a scanner's series has them.
    assert dicom_validation_errors(tmp_path / "ncct_SYNTHETIC") == []
    back = read_volume(tmp_path / "ncct_SYNTHETIC")
    assert np.abs(back.array - synthetic.array).max() <= 1.0
    np.testing.assert_allclose(back.origin, src.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing, src.spacing, atol=1e-5)


def test_export_never_writes_into_the_source_or_a_used_folder(tmp_path, source):
    folder, files = source
    src = read_volume(folder)
    with pytest.raises(OutputError, match="inside the source series folder"):
        export_dicom_series(src, folder / "synthetic", source_files_of(src), "m", "0" * 64)
    with pytest.raises(OutputError, match="not empty"):
        export_dicom_series(src, folder, source_files_of(src), "m", "0" * 64)
    assert not (folder / "synthetic").exists() and len(list(folder.iterdir())) == len(files)


def test_synthesize_with_dicom_out_from_the_cli(tmp_path, source, tiny_model_card, capsys):
    folder, files = source
    before = checksums(files)
    rc = main(["synthesize", str(folder), str(tmp_path / "case_synthetic.nrrd"), "--model", str(tiny_model_card),
               "--device", "cpu", "--no-progress", "--dicom-out", str(tmp_path / "case_SYNTHETIC_DICOM")])
    assert rc == 0, capsys.readouterr().err
    ds = pydicom.dcmread(sorted((tmp_path / "case_SYNTHETIC_DICOM").iterdir())[0])
    assert ds.SeriesDescription.startswith("SYNTHETIC CONTRAST -") and "tiny-test" in ds.DerivationDescription
    assert checksums(files) == before
    # The export verb takes the provenance from the NRRD header.
    rc = main(["export-dicom", str(tmp_path / "case_synthetic.nrrd"), str(folder), str(tmp_path / "again")])
    assert rc == 0 and len(list((tmp_path / "again").iterdir())) == 10



@pytest.mark.parametrize("charset,name", [
    ("ISO_IR 192", "Müller^Jürgen"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
])
def test_non_ascii_patient_names_survive_export(tmp_path, charset, name):
    files = write_dicom_series(tmp_path / "src", np.round(chest_like((4, 16, 16))), patient_name=name, charset=charset)
    src = read_volume(tmp_path / "src")
    out = export_dicom_series(src, tmp_path / "synthetic", source_files_of(src), "m", "0" * 64)
    for path in out:
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == name
        assert ds.SpecificCharacterSet == pydicom.dcmread(files[0]).SpecificCharacterSet
    assert dicom_validation_errors(tmp_path / "synthetic") == []


def test_an_oblique_volume_is_exported_with_its_own_orientation(tmp_path, source):
    """A non-symmetric direction: rows and columns of the matrix differ, so only the right ones give the IOP."""
    import SimpleITK as sitk

    folder, files = source
    src = read_volume(folder)
    oblique = tuple(sitk.VersorRigid3DTransform((0.1, -0.05, 0.2, 1.0)).GetMatrix())
    synthetic = src.with_array(src.array + 100.0)
    synthetic.direction = oblique
    out = export_dicom_series(synthetic, tmp_path / "oblique", None, "m", "0" * 64)
    d = np.asarray(oblique).reshape(3, 3)
    for k, path in enumerate(out):
        ds = pydicom.dcmread(path)
        np.testing.assert_allclose(np.array(ds.ImageOrientationPatient, float), [*d[:, 0], *d[:, 1]], atol=1e-6)
        np.testing.assert_allclose(np.array(ds.ImagePositionPatient, float), synthetic.index_to_physical((0, 0, k)), atol=1e-5)
    back = read_volume(tmp_path / "oblique")
    np.testing.assert_allclose(back.direction, oblique, atol=1e-5)


# The patient and study identity the derived series must carry over, named here as DICOM names them (PS3.3 Patient,
# General Study, Patient Study, Frame of Reference and General Equipment modules), with literal values.
IDENTITY = {
    "PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "19510203", "PatientSex": "F", "PatientAge": "075Y",
    "StudyDate": "20261130", "StudyTime": "081500", "StudyID": "S77", "AccessionNumber": "ACC-991",
    "ReferringPhysicianName": "Who^Doctor", "StudyDescription": "CT CHEST WITHOUT CONTRAST", "PositionReferenceIndicator": "SN",
    "Manufacturer": "Scanner Co", "InstitutionName": "General Hospital", "PatientPosition": "FFS", "BodyPartExamined": "CHEST",
}


def test_every_identity_attribute_is_copied_literally_and_each_slice_names_its_source(tmp_path, source):
    folder, files = source
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    src = read_volume(folder)
    out = export_dicom_series(src.with_array(src.array + 50.0), tmp_path / "out", source_files_of(src), "m", "a" * 64)
    by_position = {tuple(round(float(v), 3) for v in pydicom.dcmread(f).ImagePositionPatient): pydicom.dcmread(f) for f in files}
    for path in out:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            assert str(ds.get(keyword)) == value, keyword
        # A derived image references the source image it was made from (PS3.3 C.7.6.1.1.4), at its own position.
        (item,) = ds.SourceImageSequence
        origin = by_position[tuple(round(float(v), 3) for v in ds.ImagePositionPatient)]
        assert item.ReferencedSOPInstanceUID == origin.SOPInstanceUID and item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.BurnedInAnnotation == "NO"
        assert ds.ImageComments.startswith("SYNTHETIC IMAGE - not acquired, not for diagnosis")
        assert ds.SeriesDescription.startswith("SYNTHETIC CONTRAST - ")
        assert (ds.WindowCenter, ds.WindowWidth) == (50, 350) and ds.RescaleType == "HU"
