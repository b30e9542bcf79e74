"""Every tolerance of the readers (io/rules.py) and of the export's grid check, tested just inside and just outside
its limit. The limits are written here literally, as docs/batch-and-inputs.md's table states them, never imported: a tolerance
changed in the code must fail here until the documentation changes with it."""

from __future__ import annotations

import struct

import numpy as np
import pydicom
import pytest
from pydicom.valuerep import DSfloat

from conftest import chest_like, write_dicom_series
from SyntheticContrastLib.errors import InputError
from SyntheticContrastLib.io.dicom_series import check_slice_stack
from SyntheticContrastLib.io.volume import Volume

AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def stack(steps, offsets=None, tilt=0.0, text=None):
    """Positions along z with the given steps (mm), optionally shifted in x per slice, or written as ``text``."""
    z = np.concatenate([[0.0], np.cumsum(steps)])
    x = np.zeros_like(z) if offsets is None else np.asarray(offsets, float)
    positions = [[DSfloat(v, auto_format=False) if isinstance(v, str) else v for v in p] for p in
                 (text if text is not None else [[float(a), 0.0, float(b)] for a, b in zip(x, z)])]
    return check_slice_stack(positions, AXIAL, [tilt] * len(positions), "stack")


def refused(message, *args, **kwargs):
    with pytest.raises(InputError, match=message):
        stack(*args, **kwargs)


def test_duplicate_slices_are_steps_under_0_001_mm():
    refused("share one position", [2.5, 0.0009, 2.5])
    _, spacing = stack([0.0011] * 4)  # thin, even and distinct: a volume, however odd
    assert spacing == pytest.approx(0.0011)


def test_a_gap_is_a_step_over_1_5_times_the_median():
    refused("slice\\(s\\) missing", [2.5, 2.5, 2.5 * 1.51, 2.5, 2.5])
    with pytest.raises(InputError) as caught:  # 1.49 x is no gap, only uneven spacing
        stack([2.5, 2.5, 2.5 * 1.49, 2.5, 2.5])
    assert "uneven slice spacing" in str(caught.value) and "missing" not in str(caught.value)


def test_steps_may_differ_by_1_percent_of_the_median_or_0_01_mm():
    assert stack([2.5, 2.5 + 0.024, 2.5, 2.5])[1] == pytest.approx(2.506)  # 0.024 <= 1 % of 2.5 mm
    refused("uneven slice spacing", [2.5, 2.5 + 0.026, 2.5, 2.5])
    assert stack([0.5, 0.5 + 0.0099, 0.5, 0.5])[1] > 0  # 0.01 mm beats 1 % (0.005 mm) for thin slices
    refused("uneven slice spacing", [0.5, 0.5 + 0.0101, 0.5, 0.5])


def test_rounding_explains_uneven_steps_only_up_to_a_tenth_of_the_spacing():
    # 0.625 mm slices written to one decimal (rounding 0.05 mm <= 0.0625): read on an even grid, with a note.
    notes = []
    text = [["0", "0", f"{k * 0.625:.1f}"] for k in range(8)]
    order, spacing = check_slice_stack([[DSfloat(v, auto_format=False) for v in p] for p in text], AXIAL, [0.0] * 8, "s", notes)
    assert spacing == pytest.approx(0.625, abs=0.01) and "written to 0.1 mm" in notes[0]
    # 0.45 mm slices to one decimal: rounding 0.05 mm is more than a tenth of 0.45 (0.045), so it is refused.
    text = [["0", "0", f"{k * 0.45:.1f}"] for k in range(8)]
    refused("uneven slice spacing", None, text=text)


def test_gantry_tilt_over_0_01_degrees_or_slices_off_the_normal_by_1_percent_plus_0_1_mm():
    stack([2.5] * 4, tilt=0.0099)
    refused("gantry tilt", [2.5] * 4, tilt=0.0101)
    # Four steps of 2.5 mm: a 10 mm stack, so the limit is 0.01 x 10 + 0.1 = 0.2 mm off the normal.
    stack([2.5] * 4, offsets=np.linspace(0, 0.19, 5))
    refused("gantry tilt", [2.5] * 4, offsets=np.linspace(0, 0.21, 5))


def test_slice_orientations_must_agree_to_1e_4(tmp_path):
    from SyntheticContrastLib.io.reading import read_volume

    for offset, ok in ((0.9e-4, True), (1.1e-4, False)):
        files = write_dicom_series(tmp_path / f"o{offset}", chest_like((4, 16, 16)))
        ds = pydicom.dcmread(files[2])
        ds.ImageOrientationPatient = [1.0, offset, 0.0, 0.0, 1.0, 0.0]
        ds.save_as(files[2])
        if ok:
            assert read_volume(files[0].parent).array.shape == (4, 16, 16)
        else:
            with pytest.raises(InputError, match="slice orientation differs"):
                read_volume(files[0].parent)


def test_the_voxel_budget_is_4096_pixels_a_side_and_2048_x_2048_x_1024_voxels():
    from SyntheticContrastLib.io.rules import check_voxel_budget

    check_voxel_budget("f", 4096 * 4096, 4096, 4096)
    with pytest.raises(InputError, match="4097 x 4096 pixels per slice"):
        check_voxel_budget("f", 4097 * 4096, 4097, 4096)
    check_voxel_budget("f", 2048 * 2048 * 1024)
    with pytest.raises(InputError, match="the reader's limit is 4294967296"):
        check_voxel_budget("f", 2048 * 2048 * 1024 + 1)


def test_nifti_sform_and_qform_may_differ_by_0_1_mm_and_1e_3(tmp_path):
    import SimpleITK as sitk

    from SyntheticContrastLib.io.nifti import HEADER_BYTES, nifti_form_disagreement

    path = tmp_path / "v.nii"
    image = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
    sitk.WriteImage(image, str(path))  # ITK writes sform == qform
    raw = bytearray(path.read_bytes())

    def shifted(mm):
        data = bytearray(raw)
        struct.pack_into("<h", data, 252, 1)  # qform_code
        struct.pack_into("<h", data, 254, 1)  # sform_code
        x = struct.unpack_from("<f", data, 268)[0]  # qoffset_x
        struct.pack_into("<f", data, 268, x + mm)
        out = tmp_path / f"s{mm}.nii"
        out.write_bytes(bytes(data))
        return out

    assert len(raw) >= HEADER_BYTES
    assert nifti_form_disagreement(shifted(0.09)) is None
    assert "origin by 0.11 mm" in nifti_form_disagreement(shifted(0.11))


GRID = dict(spacing=(0.8, 0.8, 2.5), origin=(-10.0, -20.0, 30.0))


@pytest.mark.parametrize("change, ok", [
    ({"origin": (-10.0 + 0.049, -20.0, 30.0)}, True), ({"origin": (-10.0 + 0.051, -20.0, 30.0)}, False),
    ({"spacing": (0.8 + 0.0009, 0.8, 2.5)}, True), ({"spacing": (0.8 + 0.0011, 0.8, 2.5)}, False),
])
def test_the_export_puts_a_volume_on_the_source_grid_within_0_05_mm_and_1e_3_mm(change, ok):
    from SyntheticContrastLib.io.dicom_export import on_source_grid

    shape = (4, 8, 8)
    source = Volume(np.zeros(shape, np.float32), GRID["spacing"], GRID["origin"])
    synthetic = Volume(np.ones(shape, np.float32), change.get("spacing", GRID["spacing"]), change.get("origin", GRID["origin"]))
    if ok:
        assert on_source_grid(synthetic, source).origin == source.origin
    else:
        with pytest.raises(InputError, match="does not lie on the source series' grid"):
            on_source_grid(synthetic, source)


@pytest.mark.parametrize("angle, ok", [(0.9e-4, True), (1.1e-4, False)])
def test_the_export_grid_direction_may_differ_by_1e_4(angle, ok):
    from SyntheticContrastLib.io.dicom_export import on_source_grid

    shape = (4, 8, 8)
    c, s = np.cos(angle), np.sin(angle)
    # A rotation by ``angle`` about z changes the direction cosines by sin(angle), about ``angle``.
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    source = Volume(np.zeros(shape, np.float32), GRID["spacing"], GRID["origin"])
    synthetic = Volume(np.ones(shape, np.float32), GRID["spacing"], GRID["origin"], direction)
    if ok:
        on_source_grid(synthetic, source)
    else:
        with pytest.raises(InputError, match="direction off by"):
            on_source_grid(synthetic, source)
