"""Shared fixtures: a tiny generator saved as a model card, small HU volumes and DICOM series written here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SyntheticContrast"))

from SyntheticContrastLib.engine.encoding import WindowEncoding  # noqa: E402
from SyntheticContrastLib.engine.models import ModelCard, save_model  # noqa: E402
from SyntheticContrastLib.engine.networks import GeneratorConfig, UNetGenerator3D  # noqa: E402
from SyntheticContrastLib.io.dicom_export import write_dicom_file  # noqa: E402

TINY = GeneratorConfig(ngf=2, levels=3, z_halvings=2, dropout=0.0)

# Hypothesis: the same examples on every run (a CI failure reproduces), no example database, and its caches in
# the temp folder rather than the source tree.
import os  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "synthetic-contrast-hypothesis"))
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("reproducible", derandomize=True, database=None)
_hypothesis_settings.load_profile("reproducible")


def variant(name: str):
    """Marks the test of one input variant of io/rules.py; test_input_variants checks that every rule has one."""
    return pytest.mark.variant(name)


def free_port() -> int:
    """A TCP port nothing listens on now: fixed ports collide when two test runs share a machine."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_generator(seed: int = 0, config: GeneratorConfig = TINY) -> UNetGenerator3D:
    torch.manual_seed(seed)
    return UNetGenerator3D(config).eval()


def chest_like(shape=(20, 32, 32), seed=0) -> np.ndarray:
    """Air around a soft-tissue block with a bright disk: enough HU structure for engine tests."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000.0, np.float32)
    z, y, x = shape
    a[:, y // 8 : -y // 8, x // 8 : -x // 8] = 40.0
    yy, xx = np.mgrid[:y, :x]
    a[:, (yy - y / 2) ** 2 + (xx - x / 2) ** 2 < (y / 6) ** 2] = 300.0
    return a + rng.normal(0, 15, shape).astype(np.float32)


@pytest.fixture
def tiny_model_card(tmp_path) -> Path:
    card = ModelCard(
        model_id="tiny-test", architecture={}, encoding=WindowEncoding(), window={"z": 16, "y": 32, "x": 32},
        default_stride=4, intended_use="tests only", training_data="none (random weights)", weights_file="",
    )
    return save_model(tiny_generator(), card, tmp_path / "model" / "tiny-test.json")


def write_dicom_series(folder: Path, hu: np.ndarray, spacing=(0.8, 0.8, 2.5), modality="CT", series_uid=None,
                       description="test series", positions=None, tilt=0.0, study_uid=None, patient_name="Test^Phantom",
                       charset=None, direction=None) -> list[Path]:
    """A minimal but valid CT (or other modality) DICOM series, int16 with rescale intercept -1024."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    files = []
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        if charset:
            ds.SpecificCharacterSet = charset
        ds.Modality, ds.PatientID, ds.PatientName = modality, "TEST", patient_name
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 1, k + 1
        z = positions[k] if positions is not None else k * spacing[2]
        d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
        ds.ImagePositionPatient = [float(v) for v in np.array([-10.0, -20.0, 0.0]) + float(z) * d[:, 2]]
        ds.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        if tilt:
            ds.GantryDetectorTilt = tilt
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.round(hu[k] + 1024).astype(np.int16).tobytes()
        path = folder / f"slice{k:03d}.dcm"
        write_dicom_file(path, ds)
        files.append(path)
    return files


def rewrite_series(files, change) -> None:
    """Edit each file of a written series in place: ``change(k, dataset)`` for slice k, then save."""
    import pydicom

    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        change(k, ds)
        write_dicom_file(path, ds)


def debian_tool(name: str, package: str) -> str:
    """The path of a command-line tool from a Debian package that CI installs (.ci/run); elsewhere a missing tool
    skips the test with a reason, and in CI it fails it."""
    import shutil

    return _debian(shutil.which(name), name, package)


def debian_file(path: str, package: str) -> str:
    """As ``debian_tool``, for a file a Debian package installs (a plugin)."""
    import os

    return _debian(path if os.path.exists(path) else None, path, package)


def _debian(found: str | None, what: str, package: str) -> str:
    import os

    if found is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{what} (Debian {package}) is not installed, and CI must run this test")
        pytest.skip(f"{what} (Debian package {package}) is not installed")
    return found


def dicom_validation_errors(folder: Path) -> list[str]:
    """dciodvfy (dicom3tools) on every file of an exported series: its 'Error' lines, empty when valid.

    CI installs dicom3tools (.ci/run); elsewhere a missing validator skips the check with a reason."""
    import subprocess

    tool = debian_tool("dciodvfy", "dicom3tools")
    errors = []
    for path in sorted(Path(folder).glob("*.dcm")):
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        errors += [f"{path.name}: {line}" for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    return errors
