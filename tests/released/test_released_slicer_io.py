"""The engine's DICOM and volume I/O under the package versions of released Slicer (5.6 to 5.10: Python 3.9, numpy
1.26, pydicom 2.4) as well as the current ones. Torch-free and fixture-free, so .ci/run also runs this file in a
virtual environment with those versions (``pytest --noconftest tests/released``)."""

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SyntheticContrast"))

from SyntheticContrastLib.errors import InputError  # noqa: E402
from SyntheticContrastLib.io.dicom_export import export_dicom_series, source_files_of, write_dicom_file  # noqa: E402
from SyntheticContrastLib.io.reading import read_volume, write_volume  # noqa: E402
from SyntheticContrastLib.io.volume import Volume  # noqa: E402


def _series(folder: Path, slices=6, size=24) -> list[Path]:
    """A CT series as a scanner writes it, through the engine's own writer (the code under test in pydicom 2.4)."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 2.5) ** 2
    files = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality, ds.SeriesDescription = "Released^Slicer", "RS1", "CT", "Thorax"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        hu = np.where(body, 40, -1000).astype(np.int16)
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        path = folder / f"slice{k:03d}.dcm"
        write_dicom_file(path, ds)
        files.append(path)
    return files


def test_versions_under_test_are_reported():
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pydicom {pydicom.__version__}")
    assert int(pydicom.__version__.split(".")[0]) in (2, 3)


def test_a_written_series_is_a_dicom_file_read_back_on_its_grid(tmp_path):
    files = _series(tmp_path / "ct")
    assert all(f.read_bytes()[128:132] == b"DICM" for f in files)  # preamble and file meta, in either pydicom
    volume = read_volume(tmp_path / "ct")
    assert volume.array.shape == (6, 24, 24) and volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert volume.array.min() == -1000 and volume.array.max() == 40


def test_the_derived_series_exports_under_this_pydicom(tmp_path):
    """Failed in every released Slicer: the exporter used pydicom 3's enforce_file_format."""
    files = _series(tmp_path / "ct")
    source = read_volume(tmp_path / "ct")
    synthetic = source.with_array(source.array + 30.0)
    written = export_dicom_series(synthetic, tmp_path / "out", source_files_of(source), "demo", "a" * 64,
                                  findings="spacing 0.8 mm outside 0.6-0.7 mm")
    assert len(written) == len(files)
    ds = pydicom.dcmread(written[0])
    src = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.PatientID == "RS1" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "SYNTHETIC" in ds.ImageComments and "OUT-OF-DISTRIBUTION WARNING: spacing 0.8 mm" in ds.ImageComments
    back = read_volume(tmp_path / "out")
    np.testing.assert_allclose(back.array, synthetic.array, atol=0.5)


def test_readers_refusals_hold_under_this_numpy(tmp_path):
    array = np.full((8, 16, 16), -1000.0, np.float32)
    array[2:6] = 40
    array[3, 4, 4] = np.nan
    path = write_volume(Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="has 1 NaN or infinite voxels"):
        read_volume(path)
    files = _series(tmp_path / "zero")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [0, 0.8]
        write_dicom_file(f, ds)
    with pytest.raises(InputError, match=r"PixelSpacing is \[0.0, 0.8\]"):
        read_volume(tmp_path / "zero")
