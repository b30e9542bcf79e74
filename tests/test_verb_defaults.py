"""Each verb with only its required arguments, as a new user first runs it: no --device, --stride, --model or
--no-progress. The defaults are what runs (the bundled model, 'auto' device, the card's stride), on tiny inputs the
test writes. serve's defaults run in test_dicom_node.py, reader-study's in test_reader_study.py, demo's in
test_readme_commands.py."""

import csv
import re
import json

import numpy as np
import pydicom
import pytest

from conftest import chest_like, write_dicom_series
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD
from SyntheticContrastLib.io.reading import read_volume, synthetic_provenance


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    assert main(["phantom", str(out)]) == 0  # seed 0, 48 slices of 512 x 512: the defaults
    return out


def test_phantom_writes_seed_0_with_its_rois(phantom_dir):
    names = sorted(p.name for p in phantom_dir.iterdir())
    assert names == ["phantom0000_cect.nii.gz", "phantom0000_ncct.nii.gz", "phantom0000_rois.json"]
    assert read_volume(phantom_dir / "phantom0000_ncct.nii.gz").array.shape == (48, 512, 512)


@pytest.fixture(scope="module")
def small_ncct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    files = write_dicom_series(folder / "ct", np.round(chest_like((16, 64, 64))), spacing=(0.8, 0.8, 2.5), description="Thorax")
    return folder / "ct", files


def test_synthesize_with_only_input_and_output(small_ncct, tmp_path, capsys):
    folder, _ = small_ncct
    assert main(["synthesize", str(folder), str(tmp_path / "ct_synthetic.nii.gz")]) == 0
    provenance = synthetic_provenance(tmp_path / "ct_synthetic.nii.gz")
    assert provenance and provenance["model_id"] == "demo_phantom_small"  # from the JSON sidecar: NIfTI keeps 80 characters
    sidecar = json.loads((tmp_path / "ct_synthetic.json").read_text())
    assert sidecar["model_sha256"] == provenance["sha256"] and len(sidecar["model_sha256"]) == 64 and sidecar["ood"]
    assert sidecar["label"].startswith("SYNTHETIC") and "versions" in sidecar
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    plan = [line for line in captured.err.splitlines() if line.startswith("plan: ")]
    assert len(plan) == 1 and plan[0].startswith("plan: fits: ") and "batch 1" in plan[0]  # the default: auto, on the CPU


def test_batch_with_only_input_and_output(small_ncct, tmp_path):
    folder, _ = small_ncct
    assert main(["batch", str(folder.parent), str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "done" and row["model_id"] == "demo_phantom_small"
    assert row["plan"].startswith("fits: ") and re.search(r", \d+ windows?", row["plan"])


def test_export_dicom_with_only_its_three_paths(small_ncct, tmp_path):
    folder, files = small_ncct
    synthetic = tmp_path / "ct_synthetic.nii.gz"
    assert main(["synthesize", str(folder), str(synthetic)]) == 0
    assert main(["export-dicom", str(synthetic), str(folder), str(tmp_path / "dicom")]) == 0
    written = sorted((tmp_path / "dicom").glob("*.dcm"))
    assert len(written) == len(files)
    ds = pydicom.dcmread(written[0])
    assert ds.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID and "SYNTHETIC" in ds.ImageComments
    ood = json.loads((tmp_path / "ct_synthetic.json").read_text())["ood"]
    assert ood != "none" and f"OUT-OF-DISTRIBUTION WARNING: {ood}" in ds.ImageComments  # a 64-pixel CT is far from training


def test_a_nifti_output_carries_its_provenance_in_a_header_extension_and_exports_without_its_sidecar(small_ncct, tmp_path):
    """NIfTI's header keeps 80 characters; the whole provenance (the sidecar's, without the file's own hash) is in a
    NIFTI_ECODE_COMMENT extension too, which nibabel, an independent reader, finds. A NIfTI moved without its
    sidecar still says which model made it, and export-dicom still needs no --model."""
    import shutil

    nib = pytest.importorskip("nibabel")
    folder, files = small_ncct
    synthetic = tmp_path / "ct_synthetic.nii.gz"
    assert main(["synthesize", str(folder), str(synthetic)]) == 0
    sidecar = json.loads((tmp_path / "ct_synthetic.json").read_text())
    (extension,) = nib.load(str(synthetic)).header.extensions
    record = json.loads(extension.get_content().rstrip(b"\0"))
    assert extension.get_code() == 6 and record == {k: v for k, v in sidecar.items() if k not in ("image", "image_sha256")}
    assert record["ood"] == sidecar["ood"] != "none" and len(record["model_sha256"]) == 64
    np.testing.assert_array_equal(np.asarray(nib.load(str(synthetic)).dataobj).transpose(2, 1, 0),
                                  read_volume(synthetic, check_hu=False).array)
    alone = tmp_path / "moved" / "ct_synthetic.nii.gz"
    alone.parent.mkdir()
    shutil.copy(synthetic, alone)  # the sidecar stays behind
    assert synthetic_provenance(alone)["sha256"] == sidecar["model_sha256"]
    assert main(["export-dicom", str(alone), str(folder), str(tmp_path / "dicom")]) == 0
    ds = pydicom.dcmread(sorted((tmp_path / "dicom").glob("*.dcm"))[0])
    assert "SYNTHETIC" in ds.ImageComments and f"OUT-OF-DISTRIBUTION WARNING: {sidecar['ood']}" in ds.ImageComments


def test_evaluate_and_cnr_with_only_what_they_require(phantom_dir, tmp_path):
    ncct, cect = phantom_dir / "phantom0000_ncct.nii.gz", phantom_dir / "phantom0000_cect.nii.gz"
    rois = phantom_dir / "phantom0000_rois.json"
    # The CECT stands in for a prediction: evaluate needs a volume, not a good one.
    assert main(["evaluate", "--pred", str(cect), "--input", str(ncct), "--reference", str(cect), "--output", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "table2.md").is_file()
    assert main(["cnr", str(ncct), str(cect), "--rois", str(rois)]) == 0


def test_pairs_with_only_archive_and_output(tmp_path):
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    study = "1.2.826.0.1.3680043.2.1125.77.1"
    case = make_phantom(11, PhantomSpec(size=128, slices=12, pixel_mm=2.8, slice_mm=5.0))
    for name, volume, description in (("nc", case.ncct, "Thorax nativ"), ("ce", case.cect, "Thorax KM venous")):
        write_dicom_series(tmp_path / "archive" / name, np.round(volume.array), spacing=volume.spacing, study_uid=study,
                           description=description)
    assert main(["pairs", str(tmp_path / "archive"), str(tmp_path / "pairs.csv")]) == 0
    with open(tmp_path / "pairs.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["study_uid"] == study and row["input"].endswith("nc") and row["target"].endswith("ce")


def test_models_list_show_and_verify_with_no_flags(capsys):
    assert main(["models", "list"]) == 0
    assert "demo_phantom_small" in capsys.readouterr().out
    assert main(["models", "show", "demo_phantom_small"]) == 0
    shown = capsys.readouterr().out
    assert "NOT FOR DIAGNOSIS" in shown
    # How each plausibility bound was chosen is the card's own text (issue: check the output).
    assert "how chosen: what iodinated contrast can do" in shown and "how chosen: the training targets' own" in shown
    assert set(json.loads(DEFAULT_MODEL_CARD.read_text())["enhancement_statistics"]["how_chosen"]) == {"physics", "training"}
    assert main(["models", "verify"]) == 0


def test_a_sidecar_is_trusted_only_beside_the_image_it_was_written_for(small_ncct, tmp_path, capsys):
    import shutil

    from SyntheticContrastLib.io.volume import Volume

    folder, _ = small_ncct
    assert main(["synthesize", str(folder), str(tmp_path / "a_synthetic.nii.gz")]) == 0
    made = read_volume(tmp_path / "a_synthetic.nii.gz", check_hu=False)
    other = tmp_path / "b_synthetic.nii.gz"
    from SyntheticContrastLib.io.reading import write_volume

    write_volume(Volume(made.array + 1, made.spacing, made.origin, made.direction,
                        {"ITK_FileNotes": "SYNTHETIC sCECT, model demo_phantom_small sha256 000000000000"}), other)
    shutil.copy(tmp_path / "a_synthetic.json", tmp_path / "b_synthetic.json")  # another image's sidecar beside it
    assert synthetic_provenance(other)["sha256"] is None
    assert main(["export-dicom", str(other), str(folder), str(tmp_path / "dicom")]) == 2
    assert "no sidecar written with this file" in capsys.readouterr().err


def test_phantom_dicom_writes_a_valid_study_that_pairs_pairs_and_that_reads_back_as_the_phantom(tmp_path, capsys):
    """phantom wrote NIfTI only, so pairs and serve could not be tried without a NIfTI-to-DICOM script."""
    from conftest import dicom_validation_errors
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    assert main(["phantom", str(tmp_path / "archive"), "--seeds", "3", "--slices", "8", "--size", "64", "--dicom"]) == 0
    study = tmp_path / "archive" / "phantom0003"
    for role in ("ncct", "cect"):
        assert len(list((study / role).glob("*.dcm"))) == 8
        assert dicom_validation_errors(study / role) == []
    ncct, cect = (pydicom.dcmread(sorted((study / r).glob("*.dcm"))[0]) for r in ("ncct", "cect"))
    assert ncct.StudyInstanceUID == cect.StudyInstanceUID and ncct.FrameOfReferenceUID == cect.FrameOfReferenceUID
    assert ncct.PatientName == "PHANTOM^0003" and "PHANTOM" in ncct.ImageComments and "ContrastBolusAgent" in cect
    spec = PhantomSpec(size=64, slices=8, pixel_mm=PhantomSpec.pixel_mm * PhantomSpec.size / 64)
    np.testing.assert_array_equal(read_volume(study / "ncct").array, np.rint(make_phantom(3, spec).ncct.array))
    assert main(["pairs", str(tmp_path / "archive"), str(tmp_path / "pairs.csv"), "--no-progress"]) == 0
    with open(tmp_path / "pairs.csv", newline="") as fh:
        (pair,) = list(csv.DictReader(fh))
    assert pair["input"].endswith("phantom0003/ncct") and pair["target"].endswith("phantom0003/cect")
    assert pair["patient_id"] == "PHANTOM0003" and (tmp_path / "archive" / "phantom0003_rois.json").is_file()
