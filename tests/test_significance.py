"""The Obuchowski-Rockette-Hillis analysis against RJafroc's own stored results (tests/data/rjafroc, written by
scripts/rjafroc_fixtures.py from RJafroc's data/ and tests/testthat/goodValues361/; each fixture names its file),
and against the Iowa OR-DBM MRMC program's printed output for the fixed-reader and fixed-case analyses."""

import json
import math
from pathlib import Path

import numpy as np
import openpyxl
import pytest

from SyntheticContrastLib.cli import main
from SyntheticContrastLib.errors import InputError
from SyntheticContrastLib.readerstudy.foms import fom_of_cases
from SyntheticContrastLib.readerstudy.ratings import Ratings
from SyntheticContrastLib.readerstudy.rjafroc import read_jafroc_excel, write_jafroc_excel
from SyntheticContrastLib.readerstudy.significance import analyze_or

DATA = Path(__file__).parent / "data" / "rjafroc"
REL = 1e-6


def fixture(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def ratings(name: str) -> Ratings:
    return Ratings.from_json(fixture(name))


def varcomp(table: dict) -> dict:
    return {k: v["Estimates"] for k, v in table.items()}


def test_dataset01_wafroc_random_readers_and_cases_equals_rjafroc():
    """RJafroc St(dataset01, FOM = 'wAFROC', method = 'OR'): F 10.30, P 0.0037."""
    ours = analyze_or(ratings("dataset01"), "wAFROC")
    ref = fixture("dataset01_wAFROC_OR_RRRC")["result"]
    np.testing.assert_allclose(ours["foms"], ref["FOMs"]["foms"], rtol=REL)
    np.testing.assert_allclose(ours["modality_means"], [v["Estimate"] for v in ref["FOMs"]["trtMeans"].values()], rtol=REL)
    tests = ref["RRRC"]["FTests"]
    assert ours["RRRC"]["F"] == pytest.approx(tests["Treatment"]["FStat"], rel=REL) == pytest.approx(10.2988, abs=1e-4)
    assert ours["RRRC"]["ddf"] == pytest.approx(tests["Error"]["DF"], rel=REL)
    assert ours["RRRC"]["p"] == pytest.approx(tests["Treatment"]["p"], rel=REL) == pytest.approx(0.003669, abs=1e-6)
    assert ours["RRRC"]["error_term"] == pytest.approx(tests["Error"]["MS"], rel=REL)
    (diff,) = ours["RRRC"]["differences"]
    (ref_diff,) = ref["RRRC"]["ciDiffTrt"].values()
    for key, ref_key in (("estimate", "Estimate"), ("stderr", "StdErr"), ("df", "DF"), ("statistic", "t"), ("p", "PrGTt")):
        assert diff[key] == pytest.approx(ref_diff[ref_key], rel=REL), key
    np.testing.assert_allclose(diff["ci"], [ref_diff["CILower"], ref_diff["CIUpper"]], rtol=REL)
    for mine, theirs in zip(ours["RRRC"]["modalities"], ref["RRRC"]["ciAvgRdrEachTrt"].values()):
        for key, ref_key in (("estimate", "Estimate"), ("stderr", "StdErr"), ("df", "DF")):
            assert mine[key] == pytest.approx(theirs[ref_key], rel=REL)
        np.testing.assert_allclose(mine["ci"], [theirs["CILower"], theirs["CIUpper"]], rtol=REL)
    for key, value in varcomp(ref["ANOVA"]["VarCom"]).items():
        assert ours["variance_components"][key] == pytest.approx(value, rel=REL), key
    for source, key in (("T", "msT"), ("R", "msR"), ("TR", "msTR")):
        assert ours["mean_squares"][key] == pytest.approx(ref["ANOVA"]["TRanova"][source]["MS"], rel=REL)
    for mine, theirs in zip(ours["per_modality"], ref["ANOVA"]["IndividualTrt"].values()):
        assert (mine["msR"], mine["var"], mine["cov2"]) == pytest.approx((theirs["msREachTrt"], theirs["varEachTrt"], theirs["cov2EachTrt"]), rel=REL)
    for mine, theirs in zip(ours["per_reader"], ref["ANOVA"]["IndividualRdr"].values()):
        assert (mine["var"], mine["cov1"]) == pytest.approx((theirs["varEachRdr"], theirs["cov1EachRdr"]), rel=REL)


@pytest.mark.parametrize("dataset,fom,reference", [
    ("dataset02", "ROC", "dataset02_Wilcoxon_OR_varcomp"),  # an ROC study (Van Dyke)
    ("dataset04", "ROC", "dataset04_ROC_OR_varcomp"),  # an FROC study, as ROC from each case's highest rating
])
def test_roc_variance_components_and_mean_squares_equal_rjafroc(dataset, fom, reference):
    ours = analyze_or(ratings(dataset), fom)
    ref = fixture(reference)["result"]
    for key, value in varcomp(ref["VarCom"]).items():
        assert ours["variance_components"][key] == pytest.approx(value, rel=REL), key
    for source, key in (("T", "msT"), ("R", "msR"), ("TR", "msTR")):
        assert ours["mean_squares"][key] == pytest.approx(ref["TRanova"][source]["MS"], rel=REL)
    for mine, theirs in zip(ours["per_modality"], ref["IndividualTrt"].values()):
        assert (mine["msR"], mine["var"], mine["cov2"]) == pytest.approx((theirs["msREachTrt"], theirs["varEachTrt"], theirs["cov2EachTrt"]), rel=REL)


def test_dataset05_wafroc_mean_squares_equal_rjafroc():
    ours = analyze_or(ratings("dataset05"), "wAFROC")
    ref = fixture("dataset05_wAFROC_OR_meansquares")["result"]
    for key in ("msT", "msR", "msTR"):
        assert ours["mean_squares"][key] == pytest.approx(ref[key][0], rel=REL)


def _printed(ours: float, printed: float) -> bool:
    """Equal to a value as a program printed it: within half a unit of its last printed decimal."""
    decimals = len(repr(printed).split(".")[1]) if "." in repr(printed) else 0
    return abs(ours - printed) <= 0.5 * 10 ** -decimals + 1e-12


def test_all_three_analyses_equal_the_iowa_program_on_dataset02():
    """RJafroc stores no full-precision FRRC and RRFC results; the Iowa OR-DBM MRMC output it ships does (printed)."""
    ours = analyze_or(ratings("dataset02"), "ROC")
    iowa = fixture("dataset02_Iowa_OR-DBM_MRMC")
    checks = [(ours["RRRC"]["F"], iowa["RRRC"]["F"]), (ours["RRRC"]["ddf"], iowa["RRRC"]["ddf"]), (ours["RRRC"]["p"], iowa["RRRC"]["p"]),
              (ours["FRRC"]["chi2"], iowa["FRRC"]["chi2"]), (ours["FRRC"]["p"], iowa["FRRC"]["p"]),
              (ours["RRFC"]["F"], iowa["RRFC"]["F"]), (ours["RRFC"]["p"], iowa["RRFC"]["p"])]
    for analysis in ("RRRC", "FRRC", "RRFC"):
        (diff,) = ours[analysis]["differences"]
        checks += [(diff["stderr"], iowa[analysis]["diff_stderr"])] + list(zip(diff["ci"], iowa[analysis]["diff_ci"]))
        for mine, theirs in zip(ours[analysis]["modalities"], iowa[analysis]["modalities"]):
            checks += [(mine["stderr"], theirs["stderr"])] + list(zip(mine["ci"], theirs["ci"]))
            if "df" in theirs:
                checks.append((mine["df"], theirs["df"]))
    for mine, theirs in zip(ours["FRRC"]["readers"], iowa["FRRC"]["readers"]):
        checks += [(mine["estimate"], theirs["estimate"]), (mine["stderr"], theirs["stderr"]), (mine["p"], theirs["p"])]
    wrong = [(a, b) for a, b in checks if not _printed(a, b)]
    assert not wrong and len(checks) == 51


def test_rjafroc_excel_in_reproduces_jafroc_and_our_excel_out_reproduces_rjafroc(tmp_path, capsys):
    """RJafroc's own example workbook (inst/extdata/Froc.xlsx) through import-rjafroc and analyze gives the
    variance components Windows JAFROC printed (6 significant digits); dataset01 written by us and read back
    gives RJafroc's full-precision result."""
    assert main(["reader-study", "import-rjafroc", str(DATA / "Froc.xlsx"), str(tmp_path / "froc")]) == 0
    assert main(["reader-study", "analyze", str(tmp_path / "froc"), "--fom", "ROC"]) == 0
    ours = json.loads((tmp_path / "froc" / "analysis" / "significance.json").read_text())
    jafroc = {k: v[0] for k, v in fixture("Froc_xlsx_HrAuc_OR_varcomp")["result"].items()}
    mapping = {"varR": "VarR", "varTR": "VarTR", "Cov1": "Cov1", "Cov2": "Cov2", "Cov3": "Cov3", "varErr": "Var"}
    for theirs, mine in mapping.items():
        assert ours["variance_components"][mine] == pytest.approx(jafroc[theirs], rel=1e-5), mine
    assert "Obuchowski-Rockette" in (tmp_path / "froc" / "analysis" / "significance.md").read_text()
    assert (tmp_path / "froc" / "analysis" / "operating_characteristics.png").stat().st_size > 10_000

    write_jafroc_excel(ratings("dataset01"), tmp_path / "dataset01.xlsx")
    assert main(["reader-study", "import-rjafroc", str(tmp_path / "dataset01.xlsx"), str(tmp_path / "d1")]) == 0
    assert main(["reader-study", "analyze", str(tmp_path / "d1"), "--export-rjafroc", str(tmp_path / "again.xlsx")]) == 0  # wAFROC
    ours = json.loads((tmp_path / "d1" / "analysis" / "significance.json").read_text())
    ref = fixture("dataset01_wAFROC_OR_RRRC")["result"]["RRRC"]["FTests"]
    assert (ours["fom"], ours["RRRC"]["F"], ours["RRRC"]["ddf"], ours["RRRC"]["p"]) == (
        "wAFROC", pytest.approx(ref["Treatment"]["FStat"], rel=REL), pytest.approx(ref["Error"]["DF"], rel=REL), pytest.approx(ref["Treatment"]["p"], rel=REL))
    again = read_jafroc_excel(tmp_path / "again.xlsx")
    np.testing.assert_array_equal(again.ll, read_jafroc_excel(tmp_path / "dataset01.xlsx").ll)


def _workbook(path, truth, fp, tp, tp_header=("ReaderID", "ModalityID", "CaseID", "LesionID", "TP_Rating")):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "TRUTH"
    for row in [["CaseID", "LesionID", "Weight"], *truth]:
        sheet.append(row)
    for name, header, rows in (("FP", ["ReaderID", "ModalityID", "CaseID", "FP_Rating"], fp),
                               ("TP", list(tp_header), tp)):
        sheet = book.create_sheet(name)
        for row in [header, *rows]:
            sheet.append(row)
    book.save(path)
    return path


@pytest.mark.parametrize("change,message", [
    (lambda t, f, p: (t, f, [r[:4] for r in p], ("ReaderID", "ModalityID", "CaseID", "LesionID")), "sheet TP: missing column(s) TP_Rating"),
    (lambda t, f, p: (t, [f[0], ["1", "A", 2, "high"]], p), "sheet FP, row 3: FP_Rating 'high' is not a number"),
    (lambda t, f, p: (t, f, p + [["1", "A", 9, 1, 50]]), "sheet TP, row 6: CaseID 9 is not in sheet TRUTH"),
    (lambda t, f, p: (t, f, p + [["1", "A", 3, 1, 60]]), "sheet TP, row 6: lesion 1 of case 3 is rated twice"),
    (lambda t, f, p: (t + [[1, 1, 1.0]], f, p), "sheet TRUTH, row 6: case 1 is listed as non-diseased (LesionID 0) and with lesions"),
])
def test_bad_sheets_are_refused_by_sheet_and_row_and_nothing_is_written(tmp_path, change, message):
    truth = [[1, 0, 0], [2, 0, 0], [3, 1, 0.5], [3, 2, 0.5]]
    fp = [["1", "A", 1, 30], ["1", "A", 2, 10]]
    tp = [["1", "A", 3, 1, 80], ["1", "A", 3, 2, 20], ["1", "B", 3, 1, 70], ["1", "B", 3, 2, 40]]
    path = _workbook(tmp_path / "bad.xlsx", *change(truth, fp, tp))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jafroc_excel(path)
    assert main(["reader-study", "import-rjafroc", str(path), str(tmp_path / "study")]) == 1
    assert not (tmp_path / "study").exists()


def test_weighted_lesions_on_a_0_to_100_scale_by_hand(tmp_path):
    """Two non-diseased cases (highest NL 30 and none), one diseased case with lesions weighted 0.75 / 0.25 rated
    80 and 20, one with a single lesion rated 30 (a tie with the FP 30). wAFROC by hand:
    case 3: FP 30 -> 0.75*1 + 0.25*0 = 0.75; FP -inf -> 1. Case 4: FP 30 -> 0.5 (tie); FP -inf -> 1.
    (0.75 + 1 + 0.5 + 1) / (2 x 2) = 0.8125. Equal weights would give (0.5 + 1 + 0.5 + 1) / 4 = 0.75."""
    nl = [[30.0, 12.5], [], [], []]
    ll = [[], [], [80.0, 20.0], [30.0]]
    assert fom_of_cases("wAFROC", nl, ll, weights=[None, None, [0.75, 0.25], [1.0]]) == pytest.approx(0.8125)
    assert fom_of_cases("wAFROC", nl, ll) == pytest.approx(0.75)
    # The same study in the JAFROC format, two readers and two modalities, through import and analyze.
    truth = [[1, 0, 0], [2, 0, 0], [3, 1, 0.75], [3, 2, 0.25], [4, 1, 1.0]]
    fp = [[r, m, 1, 30] for r in ("R1", "R2") for m in ("A", "B")] + [[r, m, 1, 12.5] for r in ("R1", "R2") for m in ("A", "B")]
    tp = [[r, m, 3, 1, 80] for r in ("R1", "R2") for m in ("A", "B")] + [[r, m, 3, 2, 20] for r in ("R1", "R2") for m in ("A", "B")]
    tp += [[r, m, 4, 1, 30] for r in ("R1", "R2") for m in ("A", "B")]
    tp[-1][4] = 99.5  # reader R2, modality B, rates case 4's lesion above every FP
    path = _workbook(tmp_path / "weighted.xlsx", truth, fp, tp)
    imported = read_jafroc_excel(path)
    from SyntheticContrastLib.readerstudy.foms import fom_matrix

    foms = fom_matrix("wAFROC", imported)
    assert foms[0].tolist() == [0.8125, 0.8125] and foms[1].tolist() == [0.8125, pytest.approx(0.9375)]  # (0.75+1+1+1)/4
    assert math.isfinite(analyze_or(imported, "wAFROC")["RRRC"]["F"])


def test_ids_with_stray_spaces_are_the_same_ids_as_rjafroc_trims_them(tmp_path):
    """Spreadsheets typed by hand carry ' 3' and 'A ': RJafroc trims them, so a lesion is matched to its truth and
    modality 'A ' is modality 'A'; untrimmed, the same workbook would be refused or split into more modalities."""
    truth = [[1, 0, 0], [" 2", 0, 0], [3, 1, 0.5], ["3 ", 2, 0.5]]
    fp = [["1", "A", 1, 30], [" 1", "A ", "2 ", 10]]
    tp = [["1", "A", 3, 1, 80], ["1 ", "A", " 3", 2, 20], ["1", "B", 3, 1, 70], ["1", " B", 3, 2, 40]]
    clean_truth = [[1, 0, 0], [2, 0, 0], [3, 1, 0.5], [3, 2, 0.5]]
    clean_fp = [["1", "A", 1, 30], ["1", "A", 2, 10]]
    clean_tp = [["1", "A", 3, 1, 80], ["1", "A", 3, 2, 20], ["1", "B", 3, 1, 70], ["1", "B", 3, 2, 40]]
    spaced = read_jafroc_excel(_workbook(tmp_path / "spaced.xlsx", truth, fp, tp))
    clean = read_jafroc_excel(_workbook(tmp_path / "clean.xlsx", clean_truth, clean_fp, clean_tp))
    assert spaced.modality_ids == ["A", "B"] and spaced.reader_ids == ["1"] and spaced.case_ids == clean.case_ids
    np.testing.assert_array_equal(spaced.ll, clean.ll)
    np.testing.assert_array_equal(spaced.nl, clean.nl)


def test_a_tiny_study_is_reported_with_its_cautions_and_a_real_one_without(tmp_path):
    """2 readers and 3 cases printed a 95% CI of -1.03 to 1.73 for a figure of merit between 0 and 1, and nothing
    remarked on 2 readers or 2.7 ddf."""
    from SyntheticContrastLib.readerstudy.report import write_significance

    nl = np.full((2, 2, 3, 1), -np.inf)
    nl[:, :, 0, 0] = [[2, 3], [1, 2]]  # the non-diseased case's highest false mark, per modality and reader
    ll = np.array([[[[3], [1]], [[4], [2]]], [[[2], [4]], [[3], [3]]]], float)  # (I, J, K2, L)
    tiny = Ratings(nl, ll, np.array([1, 1]), np.ones((2, 1)), ["NCCT", "sCECT"], ["R1", "R2"], ["1", "2", "3"])
    result = write_significance(tiny, "wAFROC", "default", tmp_path / "tiny")
    text = (tmp_path / "tiny" / "significance.md").read_text()
    assert "**Caution: a small study.**" in text and "only 2 reader(s) (fewer than 4)" in text and "only 3 case(s)" in text
    assert any("denominator degrees of freedom" in c for c in result["cautions"])
    assert json.loads((tmp_path / "tiny" / "significance.json").read_text())["cautions"] == result["cautions"]
    real = write_significance(ratings("dataset01"), "wAFROC", "default", tmp_path / "d1")
    assert real["cautions"] == [] and "Caution" not in (tmp_path / "d1" / "significance.md").read_text()


def test_non_inferiority_and_equivalence_by_hand():
    """Worked by hand, t table: (-0.02 + 0.05) / 0.015 = 2.0 with 10 df is one-sided P 0.0367 (two-sided 0.0734),
    not below 0.025; (0.05 + 0.02) / 0.015 = 4.67 is P 0.00044. With the normal (fixed readers): (0.01 + 0.05) / 0.02
    = 3 is P 0.00135 and (0.05 - 0.01) / 0.02 = 2 is P 0.02275, so both directions and equivalence hold."""
    from SyntheticContrastLib.readerstudy.significance import margin_tests

    (t,) = margin_tests([{"a": "NCCT+sCECT", "b": "CECT", "estimate": -0.02, "stderr": 0.015, "df": 10.0}], 0.05)
    assert t["a_not_inferior_to_b"]["p"] == pytest.approx(0.036694, abs=1e-6) and not t["a_not_inferior_to_b"]["rejected"]
    assert t["b_not_inferior_to_a"]["p"] == pytest.approx(0.000443, abs=1e-5) and t["b_not_inferior_to_a"]["rejected"]
    assert t["equivalent"]["p"] == t["a_not_inferior_to_b"]["p"] and not t["equivalent"]["rejected"]
    assert t["a_not_inferior_to_b"]["null"] == "NCCT+sCECT is worse than CECT by 0.05 or more"
    (z,) = margin_tests([{"a": "A", "b": "B", "estimate": 0.01, "stderr": 0.02, "df": None}], 0.05)
    assert z["a_not_inferior_to_b"]["p"] == pytest.approx(0.0013499, abs=1e-6)
    assert z["b_not_inferior_to_a"]["p"] == pytest.approx(0.0227501, abs=1e-6)
    assert z["equivalent"]["rejected"] and z["level"] == 0.025


def test_margin_conclusions_agree_with_the_confidence_intervals_in_every_analysis(tmp_path):
    """dataset01: each conclusion holds exactly when the analysis' own 95% CI lies above -margin (non-inferiority)
    or within +-margin (equivalence); the report states each null hypothesis in words."""
    from SyntheticContrastLib.readerstudy.report import write_significance

    for margin in (0.02, 0.05, 0.1):
        result = write_significance(ratings("dataset01"), "wAFROC", "default", tmp_path / str(margin), margin=margin)
        for analysis in ("RRRC", "FRRC", "RRFC"):
            for d, t in zip(result[analysis]["differences"], result["margin"][analysis]):
                lo, hi = d["ci"]
                assert t["a_not_inferior_to_b"]["rejected"] == (lo > -margin), (analysis, margin, d)
                assert t["b_not_inferior_to_a"]["rejected"] == (hi < margin), (analysis, margin, d)
                assert t["equivalent"]["rejected"] == (lo > -margin and hi < margin)
    text = (tmp_path / "0.05" / "significance.md").read_text()
    assert "## Non-inferiority and equivalence, margin 0.05 (random readers and cases)" in text
    assert "| BT is worse than DM by 0.05 or more | 3.253e-05 | rejected: BT is non-inferior to DM |" in text
    assert "| BT and DM differ by 0.05 or more | 0.9413 | not rejected |" in text
    with pytest.raises(ValueError, match="between 0 and 1"):
        write_significance(ratings("dataset01"), "wAFROC", "default", tmp_path / "bad", margin=5)


def test_var_tr_and_var_r_follow_rjafroc_where_cov2_is_below_cov3_and_keep_the_iowa_values():
    """dataset03 (Franken), ROC AUC: Cov2 0.00048364 < Cov3 0.00051251. RJafroc's UtilORVarComp.R (44b0e39e) notes
    VarTR -0.00068389146 and VarR 2.3319942e-05 from its max(Cov2 - Cov3, 0); the Iowa OR-DBM MRMC output it ships
    (tests/testthat/goodValues361/Iowa/Franken1.txt) prints Var(T*R) -0.00071276 and Var(R) 0.00003776."""
    ours = analyze_or(ratings("dataset03"), "ROC")
    v = ours["variance_components"]
    assert v["Cov2"] == pytest.approx(0.00048364, abs=5e-9) and v["Cov3"] == pytest.approx(0.00051251, abs=5e-9)
    assert v["VarTR"] == pytest.approx(-0.00068389146, rel=REL) and v["VarR"] == pytest.approx(2.3319942e-05, rel=REL)
    iowa = v["iowa_or_dbm_mrmc"]
    assert iowa["VarTR"] == pytest.approx(-0.00071276, abs=5e-9) and iowa["VarR"] == pytest.approx(0.00003776, abs=5e-9)
    assert "RJafroc" in v["as_in"]


@pytest.mark.parametrize("fom", ["wAFROC", "AFROC", "ROC"])
def test_a_figure_of_merit_the_design_cannot_give_is_an_error_not_nan(fom):
    """Only diseased cases: wAFROC, AFROC and ROC compare against non-diseased cases, which there are none of."""
    full = ratings("dataset01")
    k1 = full.shape[2]
    diseased_only = Ratings(full.nl[:, :, k1:], full.ll, full.lesions_per_case, full.weights, full.modality_ids,
                            full.reader_ids, full.case_ids[k1:])
    with pytest.raises(ValueError, match=f"{fom} needs non-diseased cases and this study has none; use wAFROC1 or AFROC1"):
        analyze_or(diseased_only, fom)
    assert math.isfinite(analyze_or(diseased_only, "wAFROC1")["RRRC"]["F"])


def _read_as_rjafroc_does(path):
    """An independent reader of RJafroc's new JAFROC format, from its rules (R/DfReadDataFile.R, 44b0e39e): exactly
    the sheets FP or NL, TP or LL and TRUTH; TRUTH's six columns; whole-number CaseID and LesionID, lesion ids
    sequential from 0 or 1; the type in the Paradigm column's first filled cell and the design (FCTRL, or CROSSED)
    in its second; every FP case in TRUTH; every TP (case, lesion) in TRUTH and on a diseased case. Returns the
    marks as {(modality, reader, case): [NL ratings]}, {(modality, reader, case, lesion): LL rating}, the weights
    {(case, lesion): weight}, the type and the non-diseased cases."""
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    names = sorted(n.upper() for n in book.sheetnames)
    assert len(names) == 3 and names[0] in ("FP", "NL") and names[1] in ("TP", "LL") and names[2] == "TRUTH", names
    sheet = {n.upper(): book[n] for n in book.sheetnames}
    truth = list(sheet["TRUTH"].iter_rows(values_only=True))
    assert list(truth[0][:6]) == ["CaseID", "LesionID", "Weight", "ReaderID", "ModalityID", "Paradigm"]
    rows = [r[:6] for r in truth[1:]]
    for r in rows:
        assert float(r[0]).is_integer() and float(r[1]).is_integer(), f"non-integer CaseID or LesionID {r[:2]}"
        float(r[2])
    lesion_ids = [int(r[1]) for r in rows]
    for k, lesion in enumerate(lesion_ids):
        assert lesion in (0, 1) or lesion == lesion_ids[k - 1] + 1, f"non-sequential lesionID at line {k + 2}"
    filled = [str(r[5]).upper() for r in rows if r[5] is not None]
    kind, design = filled[0], ("FCTRL" if filled[1] == "CROSSED" else filled[1])
    assert kind in ("FROC", "ROC", "LROC") and design == "FCTRL", (kind, design)
    normal = {int(r[0]) for r in rows if int(r[1]) == 0}
    weights = {(int(r[0]), int(r[1])): float(r[2]) for r in rows if int(r[1]) > 0}
    nl, ll = {}, {}
    fp_sheet = sheet["FP"] if "FP" in sheet else sheet["NL"]
    for reader, modality, case, rating in list(fp_sheet.iter_rows(values_only=True))[1:]:
        assert int(case) in normal or any(c == int(case) for c, _ in weights), f"FP case {case} not in TRUTH"
        nl.setdefault((str(modality), str(reader), int(case)), []).append(float(rating))
    tp_sheet = sheet["TP"] if "TP" in sheet else sheet["LL"]
    for reader, modality, case, lesion, rating in list(tp_sheet.iter_rows(values_only=True))[1:]:
        assert (int(case), int(lesion)) in weights and int(case) not in normal, f"TP {case}/{lesion} not a lesion in TRUTH"
        ll[(str(modality), str(reader), int(case), int(lesion))] = float(rating)
    return nl, ll, weights, kind, normal


def test_an_exported_workbook_is_read_by_rjafrocs_rules_with_the_same_ratings_and_truth(tmp_path):
    """dataset01 with case ids that are not numbers (as ours are): written, then read by the rules RJafroc applies.
    The ids become 1..K with a map beside the workbook, and import-rjafroc puts our ids back."""
    source = ratings("dataset01")
    source.case_ids = [f"patient-{c}" for c in source.case_ids]
    write_jafroc_excel(source, tmp_path / "d1.xlsx")
    nl, ll, weights, kind, normal = _read_as_rjafroc_does(tmp_path / "d1.xlsx")
    _, _, k1, k2 = source.shape
    assert kind == source.paradigm == "FROC" and normal == set(range(1, k1 + 1))
    for i, modality in enumerate(source.modality_ids):
        for j, reader in enumerate(source.reader_ids):
            for k in range(k1 + k2):
                expected = sorted(v for v in source.nl[i, j, k] if np.isfinite(v))
                assert sorted(nl.get((modality, reader, k + 1), [])) == expected
            for k in range(k2):
                for n in range(source.lesions_per_case[k]):
                    rating = ll.get((modality, reader, k1 + k + 1, n + 1), -np.inf)
                    assert rating == source.ll[i, j, k, n]
                    assert weights[(k1 + k + 1, n + 1)] == source.weights[k, n]
    back = read_jafroc_excel(tmp_path / "d1.xlsx")
    assert back.case_ids == source.case_ids  # through d1_case_ids.csv
    np.testing.assert_array_equal(back.ll, source.ll)


def test_rjafrocs_study_without_non_diseased_cases_and_its_roc_workbook_are_read_as_rjafroc_reads_them(tmp_path):
    """frocLocatClass.xlsx (no non-diseased case, all weights 0 for equal weights): imported, and its wAFROC1 equals
    RJafroc's stored 0.444444 (UtilFigureOfMeritFROC-wAFROC1a.rds). rocCr.xlsx is an ROC study: imported as ROC,
    with the ratings RJafroc's DfReadDataFile gives (goodValues361/DfReadDataFile/rocCr.rds)."""
    from SyntheticContrastLib.readerstudy.foms import fom_matrix

    assert main(["reader-study", "import-rjafroc", str(DATA / "frocLocatClass.xlsx"), str(tmp_path / "locat")]) == 0
    locat = Ratings.from_json(json.loads((tmp_path / "locat" / "ratings.json").read_text()))
    assert locat.shape[2] == 0
    expected = fixture("frocLocatClass_wAFROC1")["result"]["trt1"]["rdr1"]
    assert fom_matrix("wAFROC1", locat)[0, 0] == pytest.approx(expected, rel=REL)
    roc = read_jafroc_excel(DATA / "rocCr.xlsx")
    theirs = ratings("rocCr_as_read")
    assert roc.paradigm == theirs.paradigm == "ROC" and roc.shape == theirs.shape
    assert (roc.modality_ids, roc.reader_ids) == (theirs.modality_ids, theirs.reader_ids)
    np.testing.assert_array_equal(roc.nl, theirs.nl)
    np.testing.assert_array_equal(roc.ll, theirs.ll)
