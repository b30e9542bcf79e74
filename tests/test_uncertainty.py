"""Knowing when not to trust it: the per-voxel SD of stochastic samples, and out-of-distribution findings."""

import copy
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import chest_like, dicom_validation_errors, tiny_generator
from SyntheticContrastLib.trust import ood
from SyntheticContrastLib.engine.case import uncertainty_path
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.engine.encoding import WindowEncoding
from SyntheticContrastLib.engine.geometry import shifted_starts
from SyntheticContrastLib.engine.inference import (
    SynthesisOptions, iter_samples, synthesize_array, synthesize_array_with_uncertainty,
)
from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD, read_card
from SyntheticContrastLib.engine.networks import GeneratorConfig
from SyntheticContrastLib.phantom import PhantomSpec, make_phantom
from SyntheticContrastLib.io.reading import read_volume, write_volume
from SyntheticContrastLib.io.volume import Volume
from SyntheticContrastLib.io.dicom_export import write_dicom_file

ENC = WindowEncoding()
WITH_DROPOUT = GeneratorConfig(ngf=2, levels=3, z_halvings=2, dropout=0.5)


def _sampled(hu, samples, generator=None, seed=0, **kw):
    generator = generator or tiny_generator(config=WITH_DROPOUT)
    options = SynthesisOptions(device="cpu", stride=4, samples=samples, seed=seed, **kw)
    return generator, options, synthesize_array_with_uncertainty(hu, generator, ENC, 16, options, inplane_multiple=8, tile=32)


def test_streaming_sd_equals_a_two_pass_numpy_sd_of_the_same_samples():
    hu = chest_like((40, 48, 48))
    generator, options, (mean, sd, report) = _sampled(hu, 5)
    samples = np.stack([s.copy() for s in iter_samples(hu, generator, ENC, 16, options, inplane_multiple=8, tile=32)])
    assert samples.shape == (5, 40, 48, 48) and report.samples == 5
    assert np.ptp(samples, axis=0).max() > 1.0  # dropout and shifts really vary the samples
    np.testing.assert_allclose(sd, samples.astype(np.float64).std(axis=0, ddof=1), atol=1e-4)
    np.testing.assert_allclose(mean, samples.astype(np.float64).mean(axis=0), atol=1e-4)
    assert sd.dtype == np.float32 and (sd >= 0).all()


def test_shifted_grids_cover_everything_and_blend_exactly():
    for size, window, step in ((40, 16, 4), (48, 32, 16), (17, 16, 8)):
        for offset in range(step):
            starts = shifted_starts(size, window, step, offset)
            covered = np.zeros(size, bool)
            for s in starts:
                covered[s : s + window] = True
            assert covered.all() and starts[0] == 0 and starts[-1] == size - window
    # A pointwise network gives the same value at a voxel whatever window it is seen in: every shifted sample
    # must then equal the one-pass result, so the SD is zero and the mean unchanged.
    from test_inference import Pointwise

    hu = chest_like((40, 48, 48))
    single, _ = synthesize_array(hu, Pointwise(), ENC, 16, SynthesisOptions(device="cpu", stride=4), inplane_multiple=8, tile=32)
    _, _, (mean, sd, report) = _sampled(hu, 4, generator=Pointwise())
    np.testing.assert_allclose(mean, single, atol=1e-3)
    assert sd.max() < 1e-2
    assert any("no dropout" in note for note in report.notes)


def test_samples_are_reproducible_and_leave_the_callers_random_state_alone():
    hu = chest_like((24, 32, 32))
    generator = tiny_generator(config=WITH_DROPOUT)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    _, _, (mean_a, sd_a, _) = _sampled(hu, 3, generator=generator, seed=1)
    assert torch.equal(torch.rand(1), expected)
    _, _, (mean_b, sd_b, _) = _sampled(hu, 3, generator=generator, seed=1)
    _, _, (mean_c, _, _) = _sampled(hu, 3, generator=generator, seed=2)
    np.testing.assert_array_equal(sd_a, sd_b)
    np.testing.assert_array_equal(mean_a, mean_b)
    assert not np.array_equal(mean_a, mean_c)
    assert not any(m.training for m in generator.modules())  # dropout is back in eval mode
    one, sd_one, report = synthesize_array_with_uncertainty(hu, generator, ENC, 16, SynthesisOptions(device="cpu", stride=4), inplane_multiple=8)
    assert sd_one is None and report.samples == 1


def test_cli_samples_write_an_sd_map_marked_synthetic_and_uncertainty(tmp_path, tiny_model_card, capsys):
    src = write_volume(Volume(chest_like((20, 32, 32)), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), tmp_path / "case.nrrd")
    out = tmp_path / "case_synthetic.nrrd"
    assert uncertainty_path(out).name == "case_synthetic_sd.nrrd"
    assert uncertainty_path(tmp_path / "x_synthetic.nii.gz").name == "x_synthetic_sd.nii.gz"
    code = main(["synthesize", str(src), str(out), "--model", str(tiny_model_card), "--device", "cpu", "--samples", "3", "--no-progress"])
    assert code == 0
    assert "uncertainty map" in capsys.readouterr().out
    sd = read_volume(uncertainty_path(out), check_hu=False)
    assert sd.metadata["SyntheticContrast.synthetic"] == "true" and sd.metadata["SyntheticContrast.map"] == "uncertainty"
    assert sd.metadata["SyntheticContrast.samples"] == "3"
    image = read_volume(out, check_hu=False)
    assert image.metadata["SyntheticContrast.samples"] == "3" and "SyntheticContrast.map" not in image.metadata
    # the tiny card has no statistics: the header says the checks were not run rather than "none"
    assert image.metadata["SyntheticContrast.ood"].startswith("not checked")


# --- out of distribution -------------------------------------------------------------------------------------

def real_ct_series(folder, slices=16):
    """pydicom's bundled CT slice (a real scan) stacked into a series: a real CT the demo model never saw."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(slices):
        ds = copy.deepcopy(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.InstanceNumber = series, k + 1
        x, y, z = (float(v) for v in source.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + k * float(source.SliceThickness)]
        write_dicom_file(folder / f"slice{k:02d}.dcm", ds)
    return folder


def test_demo_model_flags_a_real_ct_and_strict_refuses_it(tmp_path, capsys):
    ct = real_ct_series(tmp_path / "real_ct")
    out = tmp_path / "real_synthetic.nrrd"
    code = main(["synthesize", str(ct), str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("out-of-distribution:")]
    assert code == 0 and len(lines) >= 3, err
    assert any("body width" in line and "300-335 mm" in line for line in lines)
    assert any("HU distribution" in line for line in lines)
    assert "out-of-distribution" not in read_volume(out, check_hu=False).metadata["SyntheticContrast.ood"]  # the summary
    assert "body width" in read_volume(out, check_hu=False).metadata["SyntheticContrast.ood"]

    strict_out = tmp_path / "strict_synthetic.nrrd"
    code = main(["synthesize", str(ct), str(strict_out), "--device", "cpu", "--no-progress", "--strict"])
    err = capsys.readouterr().err
    assert code == 3 and "out of the model's training distribution" in err and str(ct) in err
    assert not strict_out.exists() and not list(tmp_path.glob(".strict*"))
    findings = [line for line in err.splitlines() if line.startswith("out-of-distribution:")]
    assert all(err.count(line.split(": ", 1)[1]) == 1 for line in findings)  # each finding said once, not again in the error
    assert f"{len(findings)} finding(s) above (--strict, nothing written)" in err


def test_demo_card_keeps_training_statistics_and_passes_its_own_kind_of_input():
    statistics = read_card(DEFAULT_MODEL_CARD).input_statistics
    assert statistics["format"] == ood.FORMAT and statistics["volumes"] == 16
    held_out = make_phantom(9001, PhantomSpec(slices=20))
    assert ood.check(held_out.ncct, statistics) == []
    findings = ood.check(held_out.cect, statistics)
    assert [f.check for f in findings] == ["already_enhanced"] and findings[0].value > 200


def test_each_check_fires_on_its_own_deviation():
    statistics = read_card(DEFAULT_MODEL_CARD).input_statistics
    base = make_phantom(9002, PhantomSpec(slices=20)).ncct
    coarse = Volume(base.array, (0.7, 0.7, 5.0), base.origin)
    assert [f.check for f in ood.check(coarse, statistics)] == ["slice_spacing_mm"]
    broken = base.array.copy()
    broken[:, :40, :] = -3000.0  # a detector/padding artefact outside what CT stores
    assert "outside_storable_hu" in [f.check for f in ood.check(Volume(broken, base.spacing, base.origin), statistics)]


def test_a_model_that_paints_contrast_into_fat_is_named_in_the_manifest_and_refused_under_strict(tmp_path):
    """The batch path of the output check: the findings reach the manifest's plausibility column and the case log,
    and --strict fails the case (nothing written) while its input passed every check."""
    import csv

    from test_plausibility import fat_painting_model

    from SyntheticContrastLib.engine.batch import BatchRunner, discover_cases
    from SyntheticContrastLib.engine.models import load_model

    write_volume(make_phantom(9003, PhantomSpec(slices=16)).ncct, tmp_path / "in" / "phantom.nii.gz")
    painter = load_model(fat_painting_model(tmp_path / "model"))
    (done,) = BatchRunner(tmp_path / "out", painter, SynthesisOptions(device="cpu")).run(discover_cases(tmp_path / "in"))
    assert done["status"] == "done" and done["ood"] == "none"
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert "fat is enhanced by a median +" in row["plausibility"], row["plausibility"]
    (refused,) = BatchRunner(tmp_path / "strict", painter, SynthesisOptions(device="cpu"), strict=True).run(discover_cases(tmp_path / "in"))
    assert refused["status"] == "failed" and "enhancement is implausible" in refused["error"]
    assert not list((tmp_path / "strict").rglob("*_synthetic*"))


def test_batch_manifest_has_the_findings_and_strict_fails_only_that_case(tmp_path):
    from SyntheticContrastLib.engine.batch import BatchRunner, discover_cases
    from SyntheticContrastLib.engine.models import load_model

    real_ct_series(tmp_path / "in" / "real")
    write_volume(make_phantom(9003, PhantomSpec(slices=16)).ncct, tmp_path / "in" / "phantom.nii.gz")
    runner = BatchRunner(tmp_path / "out", load_model(DEFAULT_MODEL_CARD), SynthesisOptions(device="cpu"), strict=True)
    results = {r["case"]: r for r in runner.run(discover_cases(tmp_path / "in"))}
    # The phantom is in distribution and the demo model's output of it passes every plausibility bound, so --strict
    # writes it; only the real CT fails, and for its input.
    assert results["phantom"]["status"] == "done", results["phantom"]
    assert results["phantom"]["ood"] == "none" and results["phantom"]["plausibility"] == "none"
    assert results["real"]["status"] == "failed" and "body width" in results["real"]["ood"]
    assert "out of the model's training distribution" in results["real"]["error"]
    manifest = (tmp_path / "out" / "manifest.csv").read_text().splitlines()
    assert "ood" in manifest[0].split(",") and "sd_output" in manifest[0].split(",")


def test_dicom_output_carries_the_findings_and_an_sd_series_of_its_own(tmp_path, capsys):
    ct = real_ct_series(tmp_path / "real_ct")
    code = main(["synthesize", str(ct), str(tmp_path / "r_synthetic.nrrd"), "--device", "cpu", "--no-progress",
                 "--samples", "2", "--dicom-out", str(tmp_path / "dicom")])
    assert code == 0, capsys.readouterr().err
    image = pydicom.dcmread(sorted((tmp_path / "dicom").glob("*.dcm"))[0])
    sd = pydicom.dcmread(sorted((tmp_path / "dicom_SD").glob("*.dcm"))[0])
    assert "OUT-OF-DISTRIBUTION" in image.ImageComments and "body width" in image.ImageComments
    assert sd.SeriesDescription.startswith("SYNTHETIC UNCERTAINTY SD") and "UNCERTAINTY MAP" in sd.ImageComments
    assert sd.SeriesInstanceUID != image.SeriesInstanceUID and sd.StudyInstanceUID == image.StudyInstanceUID
    assert float(sd.RescaleSlope) == pytest.approx(0.1) and sd.SeriesNumber != image.SeriesNumber
    assert dicom_validation_errors(tmp_path / "dicom") == [] and dicom_validation_errors(tmp_path / "dicom_SD") == []
    back = sitk.ReadImage(str(tmp_path / "r_synthetic_sd.nrrd"))
    assert np.abs(sd.pixel_array * 0.1 - sitk.GetArrayFromImage(back)[0]).max() <= 0.05 + 1e-6


def test_training_writes_the_input_statistics_into_the_card(tmp_path):
    from test_phantom_training import _pairs, _tiny_cfg
    from SyntheticContrastLib.engine.training import Trainer

    pairs = _pairs()
    Trainer(_tiny_cfg(1), tmp_path).fit(pairs, pairs[:1])
    card = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert card["input_statistics"]["volumes"] == len(pairs)
    assert card["input_statistics"]["ranges"]["slice_spacing_mm"] == [1.0, 1.0]


# --- calibration of the SD against the reference ---------------------------------------------------------------

def test_sparsification_against_a_brute_force_computation():
    from SyntheticContrastLib.trust.calibration import FRACTIONS, sparsification

    rng = np.random.default_rng(0)
    error = rng.gamma(2.0, 5.0, 500)
    sd = error + rng.normal(0, 5, 500)  # informative but imperfect

    def remaining(order):
        return np.array([error[order][int(f * 500):].mean() for f in FRACTIONS])

    result = sparsification(sd, error)
    by_sd, oracle = remaining(np.argsort(-sd)), remaining(np.argsort(-error))
    np.testing.assert_allclose(result["mae_by_uncertainty"], by_sd, rtol=1e-10)
    np.testing.assert_allclose(result["mae_oracle"], oracle, rtol=1e-10)
    gap = by_sd - oracle
    assert result["ause_hu"] == pytest.approx(float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(FRACTIONS))))
    assert result["spearman_rho"] == pytest.approx(stats_spearman(sd, error))
    perfect = sparsification(error, error)
    assert perfect["ause_hu"] == pytest.approx(0.0, abs=1e-12) and perfect["spearman_rho"] == pytest.approx(1.0)
    assert sparsification(rng.random(500), error)["ause_hu"] > result["ause_hu"] > 0


def stats_spearman(a, b):
    from scipy.stats import spearmanr

    return spearmanr(a, b)[0]


def test_evaluate_with_an_sd_map_reports_calibration(tmp_path, capsys):
    case = make_phantom(9004, PhantomSpec(size=256, slices=16, pixel_mm=1.4, slice_mm=5.0))
    error = np.abs(case.cect.array - case.ncct.array)  # the error calibration ranks: HU, not windowed
    paths = {}
    for name, vol in (("pred", case.ncct), ("input", case.ncct), ("ref", case.cect), ("sd", case.ncct.with_array(error))):
        paths[name] = write_volume(vol, tmp_path / f"{name}.nrrd")
    code = main(["evaluate", "--pred", str(paths["pred"]), "--input", str(paths["input"]), "--reference", str(paths["ref"]),
                 "--sd", str(paths["sd"]), "--output", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert code == 0 and "Spearman(SD, |error|)" in out
    rows = (tmp_path / "eval" / "uncertainty_calibration.csv").read_text().splitlines()
    assert rows[0].startswith("case,voxels,spearman_rho") and len(rows) == 2
    rho = float(rows[1].split(",")[2])
    assert rho > 0.99  # an SD map equal to the error ranks the errors perfectly (up to float rounding)
    assert (tmp_path / "eval" / "sparsification.png").stat().st_size > 1000


def test_calibration_counts_only_the_body_whatever_the_evaluation_mask(tmp_path):
    """Air around the patient is most of a CT and trivially ranked (error and SD both near 0 or both large): the
    calibration figures are of the body, even when the evaluation itself uses no body mask."""
    from SyntheticContrastLib.measurement.evaluation import EvaluationSettings, evaluate_case
    from SyntheticContrastLib.trust.anatomy import body_mask

    case = make_phantom(9005, PhantomSpec(slices=8))
    body = body_mask(case.ncct.array)
    rng = np.random.default_rng(0)
    pred = case.cect.array + rng.normal(0, 20, case.cect.array.shape).astype(np.float32)
    error = np.abs(pred - case.cect.array)
    sd = np.where(body, rng.uniform(0, 40, error.shape), error * 10.0).astype(np.float32)  # perfect outside, blind inside
    result = evaluate_case(case.cect.with_array(pred), case.ncct, case.cect, EvaluationSettings(body_mask=None),
                           sd=case.cect.with_array(sd))
    assert result["calibration"]["voxels"] == int(body.sum()) < body.size // 2
    assert abs(result["calibration"]["spearman_rho"]) < 0.05
