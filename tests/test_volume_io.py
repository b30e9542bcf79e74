"""Volume I/O keeps geometry exactly and rejects unusable inputs with the file and the problem named."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import chest_like, variant, write_dicom_series
from SyntheticContrastLib.errors import InputError, SeriesSelectionError
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import Volume

OBLIQUE = tuple(sitk.VersorRigid3DTransform((0.1, 0.05, 0.02, 1.0)).GetMatrix())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_geometry_round_trip(tmp_path, suffix):
    vol = Volume(chest_like((18, 24, 20)), (0.7, 0.8, 2.5), (-120.5, 33.25, -400.0), OBLIQUE)
    path = write_volume(vol, tmp_path / f"v{suffix}")
    back = read_volume(path)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    np.testing.assert_array_equal(back.array, vol.array)
    assert not list(tmp_path.glob("*.partial*"))


@variant("classic CT series")
def test_dicom_series_geometry_and_values(tmp_path):
    hu = np.round(chest_like((12, 24, 20)))
    write_dicom_series(tmp_path / "ct", hu, spacing=(0.8, 0.7, 2.0))
    vol = read_volume(tmp_path / "ct")
    np.testing.assert_allclose(vol.spacing, (0.8, 0.7, 2.0), atol=1e-6)
    np.testing.assert_allclose(vol.origin, (-10.0, -20.0, 0.0), atol=1e-6)
    np.testing.assert_array_equal(vol.array, hu)


def test_an_oblique_dicom_series_is_read_with_its_direction(tmp_path):
    hu = np.round(chest_like((10, 24, 20)))
    write_dicom_series(tmp_path / "ct", hu, spacing=(0.8, 0.7, 2.0), direction=OBLIQUE)
    vol = read_volume(tmp_path / "ct")
    np.testing.assert_allclose(vol.direction, OBLIQUE, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.7, 2.0), atol=1e-5)
    np.testing.assert_array_equal(vol.array, hu)
    # The last slice's first voxel sits where the writer put it: origin + 9 x 2 mm along the normal.
    np.testing.assert_allclose(vol.index_to_physical((0, 0, 9)), np.array([-10.0, -20.0, 0.0]) + 18.0 * np.asarray(OBLIQUE).reshape(3, 3)[:, 2], atol=1e-4)


@variant("several image series in one folder")
def test_folder_with_two_series_asks_which(tmp_path):
    write_dicom_series(tmp_path / "mixed", chest_like((8, 16, 16)), series_uid="1.2.3.1", description="NCCT 3mm")
    write_dicom_series(tmp_path / "mixed2", chest_like((10, 16, 16)), series_uid="1.2.3.2", description="CECT 3mm")
    for f in (tmp_path / "mixed2").iterdir():
        f.rename(tmp_path / "mixed" / f"b_{f.name}")
    with pytest.raises(SeriesSelectionError) as err:
        read_volume(tmp_path / "mixed")
    text = str(err.value)
    assert "2 DICOM series" in text and "NCCT 3mm" in text and "CECT 3mm" in text and "10 images" in text and "[CT images]" in text
    assert read_volume(tmp_path / "mixed", series_uid="1.2.3.2").array.shape[0] == 10


@pytest.mark.parametrize(
    "kwargs,message",
    [
        pytest.param({"modality": "MR"}, "modality is MR, not CT", marks=variant("non-CT modality")),
        pytest.param({"positions": [0, 2, 4, 6, 10, 12, 14, 16]}, "1 slice(s) missing", marks=variant("missing slices")),
        pytest.param({"positions": [0, 2, 4, 6, 7.5, 9, 11, 13]}, "uneven slice spacing", marks=variant("uneven spacing")),
        pytest.param({"tilt": 15.0}, "gantry tilt", marks=variant("gantry tilt")),
        pytest.param({"positions": [0, 2, 4, 4, 6, 8, 10, 12]}, "two slices share one position", marks=variant("duplicate positions")),
    ],
)
def test_dicom_problems_are_reported(tmp_path, kwargs, message):
    write_dicom_series(tmp_path / "s", chest_like((8, 16, 16)), spacing=(1, 1, 2), **kwargs)
    with pytest.raises(InputError) as err:
        read_volume(tmp_path / "s")
    assert message in str(err.value) and str(tmp_path / "s") in str(err.value)


def test_value_problems_are_reported(tmp_path):
    bad = chest_like((8, 16, 16))
    bad[3, 4, 4] = np.nan
    write_volume(Volume(bad, (1, 1, 1), (0, 0, 0)), tmp_path / "nan.nrrd")  # ITK's NIfTI reader turns NaN into 0
    with pytest.raises(InputError, match="1 NaN or infinite voxels"):
        read_volume(tmp_path / "nan.nrrd")  # ITK's NIfTI reader turns NaN into 0
    write_volume(Volume(chest_like((8, 16, 16)) / 1000 + 1, (1, 1, 1), (0, 0, 0)), tmp_path / "scaled.nii.gz")
    with pytest.raises(InputError, match="do not look like Hounsfield units"):
        read_volume(tmp_path / "scaled.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.float32) - 1000), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2D image"):
        read_volume(tmp_path / "flat.nii.gz")


def test_path_problems_are_reported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nothing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty folder"):
        read_volume(tmp_path / "empty")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="cannot be read as an image"):
        read_volume(tmp_path / "broken.nii.gz")
    files = write_dicom_series(tmp_path / "corrupt", chest_like((6, 16, 16)))
    files[2].write_bytes(b"garbage" * 10)
    with pytest.raises(InputError) as err:
        read_volume(tmp_path / "corrupt")
    assert "corrupt" in str(err.value)


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    path = write_volume(Volume(chest_like((4, 8, 8)), (1, 1, 1), (0, 0, 0)), tmp_path / "v.nrrd")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_nifti_synthetic_whose_description_was_rewritten_is_still_found_synthetic_by_its_sidecar(tmp_path):
    """NIfTI keeps the SYNTHETIC label only in its 80-byte description, which other tools rewrite; the sidecar written
    with the very file (its sha256 checked) still says synthetic and names the model."""
    from SyntheticContrastLib.io.reading import synthetic_provenance

    path = tmp_path / "s_synthetic.nii.gz"
    write_volume(Volume(chest_like((4, 16, 16)), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0)), path,
                 {"SyntheticContrast.synthetic": "true", "SyntheticContrast.label": "SYNTHETIC contrast-enhanced CT",
                  "SyntheticContrast.model_id": "chest-v1", "SyntheticContrast.model_sha256": "cd" * 32})
    found = synthetic_provenance(path)  # no ITK_FileNotes was given: the description is empty
    assert found is not None and (found["model_id"], found["sha256"]) == ("chest-v1", "cd" * 32)
    (tmp_path / "s_synthetic.json").write_text("{}")  # its sidecar lost: the file's own header extension still says so
    assert synthetic_provenance(path)["sha256"] == "cd" * 32
    plain = tmp_path / "p.nii.gz"  # no extension, and a sidecar written for another file: nothing says synthetic
    sitk.WriteImage(sitk.GetImageFromArray(chest_like((4, 16, 16))), str(plain))
    (tmp_path / "p.json").write_text(json.dumps({"format": "synthetic-contrast-sidecar/1", "image_sha256": "0" * 64,
                                                 "synthetic": "true", "model_sha256": "cd" * 32}))
    assert synthetic_provenance(plain) is None
