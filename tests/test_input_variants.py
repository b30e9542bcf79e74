"""Acquisitions that real archives hold beyond axial LPS slices: sagittal and coronal series, NIfTI files with
flipped rows (dcm2niix writes RAS), left-handed grids. The network sees every one of them in axial LPS voxel order."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import chest_like, write_dicom_series
from SyntheticContrastLib.trust import ood
from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
from SyntheticContrastLib.engine.models import load_model
from SyntheticContrastLib.io.orientation import AxialLayout
from SyntheticContrastLib.io.reading import read_volume
from SyntheticContrastLib.io.volume import Volume

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
    assert ood.measure(read) == pytest.approx(ood.measure(axial))
