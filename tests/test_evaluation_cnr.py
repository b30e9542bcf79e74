"""Metrics against independent computations, and CNR against hand-worked geometry and arithmetic."""

import math

import csv
import json

import numpy as np
import pytest
from scipy import stats as st
from skimage.metrics import structural_similarity

from SyntheticContrastLib.measurement import metrics
from SyntheticContrastLib.measurement.cnr import circle_roi, measure_cnr, summarize_cnr
from SyntheticContrastLib.measurement.evaluation import EvaluationSettings, evaluate_case, summarize, table2_markdown
from SyntheticContrastLib.measurement.rois import ROI_FORMAT, parse_rois
from SyntheticContrastLib.measurement.stats import paired_comparison
from SyntheticContrastLib.io.volume import Volume


def test_mae_and_psnr_by_hand():
    rng = np.random.default_rng(1)
    a = rng.uniform(-400, 500, (3, 20, 20))
    b = rng.uniform(-400, 500, (3, 20, 20))
    ca, cb = np.clip(a, -125, 225), np.clip(b, -125, 225)
    assert metrics.mae(a, b) == pytest.approx(np.abs(ca - cb).mean())
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(350**2 / ((ca - cb) ** 2).mean()))
    mask = np.zeros(a.shape, bool)
    mask[:, 5:10, 5:10] = True
    assert metrics.mae(a, b, mask=mask) == pytest.approx(np.abs(ca - cb)[mask].mean())


def test_single_scale_ssim_equals_scikit_image():
    rng = np.random.default_rng(2)
    x = rng.random((64, 70))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    ours, _ = metrics.ssim_components(x, y, data_range=1.0)
    theirs = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(theirs, abs=1e-10)


def test_ms_ssim_behaviour():
    rng = np.random.default_rng(3)
    x = rng.random((200, 200))
    assert metrics.ms_ssim_2d(x, x) == pytest.approx(1.0)
    slightly = metrics.ms_ssim_2d(x, np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1))
    badly = metrics.ms_ssim_2d(x, np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1))
    assert 1 > slightly > badly > 0
    with pytest.raises(ValueError, match="larger than 160 px"):
        metrics.ms_ssim_2d(x[:160, :160], x[:160, :160])


def test_paired_comparison_follows_shapiro_wilk():
    rng = np.random.default_rng(4)
    a = rng.normal(10, 1, 30)
    b = a - rng.normal(1, 0.5, 30)
    res = paired_comparison(a, b)
    assert res["test"] == "paired t-test" and res["p"] == pytest.approx(st.ttest_rel(a, b).pvalue)
    skewed = a - rng.exponential(1, 30) ** 3
    res = paired_comparison(a, skewed)
    assert res["shapiro_p"] < 0.05 and res["test"] == "Wilcoxon signed-rank"
    assert res["p"] == pytest.approx(st.wilcoxon(a, skewed).pvalue)


def test_evaluate_case_and_table(tmp_path):
    rng = np.random.default_rng(5)
    ref = rng.normal(40, 30, (4, 170, 170)).astype(np.float32)
    vol = lambda a: Volume(a.astype(np.float32), (1, 1, 1), (0, 0, 0))
    cases = []
    for n in range(4):
        good = ref + rng.normal(0, 5, ref.shape)
        bad = ref + rng.normal(0, 40 + n, ref.shape)
        res = evaluate_case(vol(good), vol(bad), vol(ref), EvaluationSettings(slices=(1, 2)))
        res["case"] = f"c{n}"
        cases.append(res)
    assert cases[0]["slices"] == [1, 2]
    assert cases[0]["sCECT"]["mae"] < cases[0]["input"]["mae"]
    assert cases[0]["sCECT"]["ms_ssim"] > cases[0]["input"]["ms_ssim"]
    assert "LPIPS skipped" in cases[0]["lpips_note"]
    table = table2_markdown(summarize(cases))
    assert "| sCECT |" in table and "MS-SSIM (×100)" in table and "Not computed: lpips" in table
    # Paper-ready: the figures and the table say n, window, slices and mask; MS-SSIM is plotted x100 as labelled;
    # an SVG with text as text sits beside the PNG; 4 cases get a caution on their P values.
    from SyntheticContrastLib.measurement.evaluation import write_reports

    settings = EvaluationSettings(slices=(1, 2), body_mask="auto")
    write_reports(cases, tmp_path / "ev", settings=settings)
    caption = "n = 4 case(s); window W350/L50 HU; slices 1-2; mask for MAE and PSNR: the body (largest region, holes filled)"
    table = (tmp_path / "ev" / "table2.md").read_text()
    assert caption in table and "**Caution:** the paired tests compare only 4 case(s)" in table
    assert "| Data set | CT | MAE (HU) ↓ | PSNR (dB) ↑ | MS-SSIM (×100) ↑ |" in table
    svg = (tmp_path / "ev" / "metrics_boxplots.svg").read_text()
    assert caption in svg and "MS-SSIM (×100) ↑" in svg and (tmp_path / "ev" / "metrics_boxplots.png").stat().st_size > 10_000
    ms_ssim = [100 * c[k]["ms_ssim"] for c in cases for k in ("input", "sCECT")]
    import re

    assert all(20 <= v <= 100 for v in ms_ssim) and not re.search(r">0\.\d+<", svg)  # MS-SSIM ticks in percent, not 0.9


# --- CNR ---------------------------------------------------------------------------------------

SPACING = (0.5, 1.0, 3.0)  # anisotropic in-plane on purpose


def hand_circle(ci, cj):
    """Voxels of a 4 mm circle at 0.5 x 1.0 mm: |di| <= 4 on the centre row, |di| <= 3 one row off, di = 0 two rows off."""
    pts = [(ci + di, cj) for di in range(-4, 5)]
    pts += [(ci + di, cj + dj) for dj in (-1, 1) for di in range(-3, 4)]
    pts += [(ci, cj - 2), (ci, cj + 2)]
    return pts


def test_circle_membership_at_anisotropic_spacing():
    vol = Volume(np.zeros((5, 30, 40), np.float32), SPACING, (0, 0, 0))
    roi = circle_roi(vol, vol.index_to_physical((10, 10, 2)), 4.0)
    expected = np.zeros((30, 40), bool)
    for i, j in hand_circle(10, 10):
        expected[j, i] = True
    assert roi.slice_index == 2 and roi.voxels == 25
    np.testing.assert_array_equal(roi.mask, expected)
    assert roi.area_mm2 == pytest.approx(12.5)


def _cnr_volume():
    a = np.full((5, 30, 80), 5000.0, np.float32)  # anything read outside the circles would show
    k = 2
    centres = {"lesion": (10, 10), "dta": (30, 10), "right_fat": (50, 10), "left_fat": (70, 10)}
    for i, j in hand_circle(*centres["lesion"]):
        a[k, j, i] = 60
    for i, j in hand_circle(*centres["dta"]):
        a[k, j, i] = 300
    for name, amp in (("right_fat", 10), ("left_fat", 20)):
        # 12 voxels at +amp, 12 at -amp, 1 at 0: mean -100 and sample SD exactly amp.
        for n, (i, j) in enumerate(hand_circle(*centres[name])):
            a[k, j, i] = -100 + (0 if n == 0 else amp * (1 if n % 2 else -1))
    vol = Volume(a, SPACING, (0, 0, 0))
    return vol, {name: vol.index_to_physical((i, j, k)).tolist() for name, (i, j) in centres.items()}


def test_cnr_formula_by_hand():
    vol, pts = _cnr_volume()
    data = {"format": ROI_FORMAT, "coordinate_system": "LPS", "roi_diameter_fraction": 0.9,
            "lesions": [{"id": "LN1", "center": pts["lesion"], "short_axis_mm": 4.0 / 0.9,
                         "references": {k: pts[k] for k in ("dta", "right_fat", "left_fat")}}]}
    (row,) = measure_cnr({"ncct": vol}, parse_rois(data))
    assert row["error"] == ""
    assert row["lesion_mean"] == pytest.approx(60) and row["dta_mean"] == pytest.approx(300)
    assert row["right_fat_sd"] == pytest.approx(10) and row["left_fat_sd"] == pytest.approx(20)
    assert row["noise"] == pytest.approx(math.sqrt(250))
    assert row["cnr"] == pytest.approx(240 / math.sqrt(250))
    assert row["lesion_voxels"] == 25 and row["lesion_area_mm2"] == pytest.approx(12.5)


def test_short_axis_line_and_ras_points_give_the_same_roi():
    vol, pts = _cnr_volume()
    c = np.array(pts["lesion"])
    ras = lambda p: [-p[0], -p[1], p[2]]
    data = {"format": ROI_FORMAT, "coordinate_system": "RAS", "roi_diameter_fraction": 0.9,
            "lesions": [{"id": "LN1", "short_axis": [ras(c - [2.0 / 0.9, 0, 0]), ras(c + [2.0 / 0.9, 0, 0])]}],
            "references": {k: ras(pts[k]) for k in ("dta", "right_fat", "left_fat")}}
    (row,) = measure_cnr({"ncct": vol}, parse_rois(data))
    assert row["cnr"] == pytest.approx(240 / math.sqrt(250))


def test_unmeasurable_lesions_report_errors_and_others_still_count():
    vol, pts = _cnr_volume()
    refs = {k: pts[k] for k in ("dta", "right_fat", "left_fat")}
    lesions = [
        {"id": "ok", "center": pts["lesion"], "short_axis_mm": 4.0 / 0.9, "references": refs},
        {"id": "edge", "center": [0.5, 1.0, 6.0], "short_axis_mm": 10.0, "references": refs},
        {"id": "tiny", "center": pts["lesion"], "short_axis_mm": 0.5, "references": refs},
        {"id": "outside", "center": [5.0, 10.0, 60.0], "short_axis_mm": 4.0 / 0.9, "references": refs},
    ]
    flat = Volume(np.full((5, 30, 80), -100.0, np.float32), SPACING, (0, 0, 0))
    rows = measure_cnr({"ncct": vol}, parse_rois({"format": ROI_FORMAT, "lesions": lesions}))
    errors = {r["lesion"]: r["error"] for r in rows}
    assert errors["ok"] == ""
    assert "runs off the image" in errors["edge"]
    assert "fewer than 5" in errors["tiny"]
    assert "outside the volume" in errors["outside"]
    (flat_row,) = measure_cnr({"flat": flat}, parse_rois({"format": ROI_FORMAT, "lesions": lesions[:1]}))
    assert "noise is zero" in flat_row["error"]


def test_cnr_summary_pairs_volumes():
    vol, pts = _cnr_volume()
    refs = {k: pts[k] for k in ("dta", "right_fat", "left_fat")}
    lesions = parse_rois({"format": ROI_FORMAT, "lesions": [
        {"id": f"L{n}", "center": pts["lesion"], "short_axis_mm": 4.0 / 0.9, "references": refs} for n in range(4)]})
    brighter = Volume(vol.array + np.where(vol.array == 300, 100, 0).astype(np.float32), SPACING, (0, 0, 0))
    summary = summarize_cnr(measure_cnr({"ncct": vol, "cect": brighter}, lesions))
    assert summary["volumes"]["cect"]["cnr"]["median"] == pytest.approx(340 / math.sqrt(250))
    assert any(c["a"] == "ncct" and c["b"] == "cect" for c in summary["comparisons"])


# --- LPIPS -------------------------------------------------------------------------------------

def _lpips_weights(path):
    import torch
    from safetensors.torch import save_file

    from SyntheticContrastLib.measurement.lpips import LPIPSAlex

    torch.manual_seed(0)
    model = LPIPSAlex()
    state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    for n in range(5):
        state[f"lin{n}.model.1.weight"] = model.state_dict()[f"heads.{n}.weight"].abs()  # LPIPS heads are non-negative
    save_file(state, str(path))
    return path


def test_lpips_from_local_weights(tmp_path):
    from SyntheticContrastLib.errors import ModelError
    from SyntheticContrastLib.measurement.lpips import load_lpips, lpips_volume

    model = load_lpips(_lpips_weights(tmp_path / "alex_lpips.safetensors"))
    rng = np.random.default_rng(6)
    ref = rng.normal(40, 60, (2, 96, 96))
    near = ref + rng.normal(0, 5, ref.shape)
    far = ref + rng.normal(0, 80, ref.shape)
    assert lpips_volume(model, ref, ref, (350, 50)) == pytest.approx(0.0, abs=1e-7)
    d_near, d_far = lpips_volume(model, near, ref, (350, 50)), lpips_volume(model, far, ref, (350, 50))
    assert 0 < d_near < d_far
    assert lpips_volume(model, ref, far, (350, 50)) == pytest.approx(d_far, rel=1e-5)
    with pytest.raises(ModelError, match="pickled"):
        load_lpips(tmp_path / "alex.pth")


def test_evaluate_uses_lpips_when_weights_are_given(tmp_path):
    rng = np.random.default_rng(7)
    ref = rng.normal(40, 30, (2, 170, 170)).astype(np.float32)
    vol = lambda a: Volume(a.astype(np.float32), (1, 1, 1), (0, 0, 0))
    settings = EvaluationSettings(lpips_weights=str(_lpips_weights(tmp_path / "w.safetensors")))
    from SyntheticContrastLib.measurement.evaluation import lpips_metric

    res = evaluate_case(vol(ref + rng.normal(0, 5, ref.shape)), vol(ref + rng.normal(0, 50, ref.shape)), vol(ref), settings, lpips_metric(settings))
    assert "lpips_note" not in res and 0 < res["sCECT"]["lpips"] < res["input"]["lpips"]


def test_cnr_uncertainty_from_an_sd_map_by_hand():
    vol, pts = _cnr_volume()
    sd = vol.with_array(np.zeros_like(vol.array))
    lesions = parse_rois({"format": ROI_FORMAT, "coordinate_system": "LPS", "roi_diameter_fraction": 0.9,
                          "lesions": [{"id": "LN1", "center": pts["lesion"], "short_axis_mm": 4.0 / 0.9,
                                       "references": {k: pts[k] for k in ("dta", "right_fat", "left_fat")}}]})
    for name, value in (("lesion", 3.0), ("dta", 4.0)):
        k = int(round(vol.physical_to_index(pts[name])[2]))
        sd.array[k] = np.where(np.abs(vol.array[k] - (60 if name == "lesion" else 300)) < 1e-3, value, sd.array[k])
    plain, with_sd = measure_cnr({"s": vol}, lesions), measure_cnr({"s": vol}, lesions, {"s": sd})
    assert "cnr_uncertainty" not in plain[0]
    row = with_sd[0]
    assert row["lesion_sd_map_mean"] == pytest.approx(3.0) and row["dta_sd_map_mean"] == pytest.approx(4.0)
    assert row["cnr_uncertainty"] == pytest.approx(5.0 / math.sqrt(250))
    assert row["cnr"] == plain[0]["cnr"]


def test_cnr_is_the_absolute_difference_when_the_lesion_is_brighter():
    vol, pts = _cnr_volume()
    k = int(round(vol.physical_to_index(pts["lesion"])[2]))
    brighter = vol.array.copy()
    brighter[k][vol.array[k] == 60] = 400.0  # lesion 400 HU, DTA 300 HU
    data = {"format": ROI_FORMAT, "coordinate_system": "LPS", "roi_diameter_fraction": 0.9,
            "lesions": [{"id": "LN1", "center": pts["lesion"], "short_axis_mm": 4.0 / 0.9,
                         "references": {k2: pts[k2] for k2 in ("dta", "right_fat", "left_fat")}}]}
    (row,) = measure_cnr({"v": vol.with_array(brighter)}, parse_rois(data))
    assert row["cnr"] == pytest.approx(100 / math.sqrt(250))


def test_paired_comparison_drops_a_pair_when_either_side_is_missing():
    from scipy import stats as sps

    from SyntheticContrastLib.measurement.stats import paired_comparison

    a = [1.0, 2.0, 3.0, 4.5, 5.0, 6.5, 7.0, 8.2]
    b = [1.4, float("nan"), 3.9, 4.4, 6.1, 6.0, 8.3, 8.0]
    result = paired_comparison(a, b)
    keep = [i for i in range(len(a)) if np.isfinite(b[i])]
    assert result["n"] == len(keep) == 7
    expected = sps.ttest_rel([a[i] for i in keep], [b[i] for i in keep]).pvalue if result["test"] == "paired t-test" else \
        sps.wilcoxon([a[i] for i in keep], [b[i] for i in keep]).pvalue
    assert result["p"] == pytest.approx(expected)
    swapped = paired_comparison(b, a)
    assert swapped["n"] == 7 and swapped["p"] == pytest.approx(result["p"])


def test_ms_ssim_weighs_the_scales_as_wang_et_al():
    """Wang, Simoncelli, Bovik 2003: weights 0.0448 ... 0.1333 from finest to coarsest, so fine-grained noise costs
    little and a coarse change costs much. Noise at the finest scale must score higher than with the weights reversed."""
    from SyntheticContrastLib.measurement.metrics import MS_SSIM_WEIGHTS, ms_ssim_2d

    assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:192, 0:192]
    x = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    y = np.clip(x + rng.normal(0, 0.08, x.shape), 0, 1)  # pixel noise: the finest scale suffers, coarse ones barely
    assert ms_ssim_2d(x, y) > ms_ssim_2d(x, y, weights=MS_SSIM_WEIGHTS[::-1]) + 0.05


def test_cnr_on_an_oblique_volume_equals_the_axial_one():
    """The same voxels under an oblique direction and another origin: points given in that volume's physical
    space must land on the same circles, so every figure is the same as on the axial volume."""
    import SimpleITK as sitk

    vol, pts = _cnr_volume()
    oblique = Volume(vol.array, vol.spacing, (12.0, -30.0, 7.5), tuple(sitk.VersorRigid3DTransform((0.2, -0.1, 0.3, 1.0)).GetMatrix()))
    moved = {name: oblique.index_to_physical(vol.physical_to_index(p)).tolist() for name, p in pts.items()}

    def lesions(points):
        return parse_rois({"format": ROI_FORMAT, "coordinate_system": "LPS", "roi_diameter_fraction": 0.9,
                           "lesions": [{"id": "LN1", "center": points["lesion"], "short_axis_mm": 4.0 / 0.9,
                                        "references": {k: points[k] for k in ("dta", "right_fat", "left_fat")}}]})

    (axial,) = measure_cnr({"v": vol}, lesions(pts))
    (tilted,) = measure_cnr({"v": oblique}, lesions(moved))
    assert tilted["error"] == "" and tilted["lesion_voxels"] == axial["lesion_voxels"] == 25
    assert tilted["cnr"] == pytest.approx(axial["cnr"]) == pytest.approx(240 / math.sqrt(250))


def test_cnr_comparison_runs_on_lesions_that_differ():
    """With identical lesions every paired difference is equal and no test runs; these differ, so one must."""
    from scipy import stats as sps

    cnr_a = [0.5, 1.1, 0.9, 1.6, 0.7, 1.3]
    cnr_b = [10.2, 14.9, 12.4, 19.7, 9.1, 16.0]
    rows = [{"lesion": f"L{i}", "volume": name, "cnr": values[i], "noise": 10.0 + i, "error": ""}
            for name, values in (("NCCT", cnr_a), ("sCECT", cnr_b)) for i in range(6)]
    (cmp,) = [c for c in summarize_cnr(rows)["comparisons"] if c["measure"] == "cnr"]
    assert cmp["n"] == 6 and cmp["test"] in ("paired t-test", "Wilcoxon signed-rank")
    expected = sps.ttest_rel(cnr_a, cnr_b) if cmp["test"] == "paired t-test" else sps.wilcoxon(cnr_a, cnr_b)
    assert cmp["p"] == pytest.approx(expected.pvalue) and cmp["p"] < 0.05


def test_cnr_over_a_study_pools_lesions_tests_across_cases_and_draws_a_figure(tmp_path, capsys):
    """cnr took one case per call, with no study-level pooling, test or figure."""
    from SyntheticContrastLib.cli import main

    data = tmp_path / "data"
    assert main(["phantom", str(data), "--seeds", "1-3", "--slices", "20", "--size", "256"]) == 0
    rows = "".join(f"p{n},data/phantom000{n}_rois.json,data/phantom000{n}_ncct.nii.gz,data/phantom000{n}_cect.nii.gz\n"
                   for n in (1, 2, 3))
    (tmp_path / "cases.csv").write_text("case,rois,NCCT,CECT\n" + rows)
    capsys.readouterr()
    assert main(["cnr", "--cases", str(tmp_path / "cases.csv"), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "cnr.json").read_text())
    assert record["cases"] == 3 and record["across_cases"]["CECT"]["median"] > record["across_cases"]["NCCT"]["median"]
    (test,) = record["tests_across_cases"]
    assert (test["a"], test["b"], test["n"]) == ("NCCT", "CECT", 3) and test["unit"].startswith("case")
    with open(tmp_path / "out" / "cnr_per_lesion.csv", newline="") as fh:
        lesions = list(csv.DictReader(fh))
    assert {r["case"] for r in lesions} == {"p1", "p2", "p3"} and record["lesions"]["CECT"] == sum(
        1 for r in lesions if r["volume"] == "CECT" and not r["error"])
    assert "# Lymph-node CNR over 3 case(s)" in printed and "**Caution:** only 3 case(s)" in printed
    assert (tmp_path / "out" / "cnr_study.png").stat().st_size > 5000 and (tmp_path / "out" / "cnr_study.svg").is_file()
    assert main(["cnr", "--cases", str(tmp_path / "cases.csv")]) == 2  # its tables need a folder
