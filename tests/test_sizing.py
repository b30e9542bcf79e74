"""reader-study size against RJafroc's stored sample-size and power results (tests/data/rjafroc, from its
tests/testthat/goodValues361/SsPower/ and test-SsSampleSizeRoc.R), and the CLI from a pilot and from components."""

import json
from pathlib import Path

import pytest

from SyntheticContrastLib.cli import main
from SyntheticContrastLib.readerstudy import sizing
from SyntheticContrastLib.readerstudy.ratings import Ratings

DATA = Path(__file__).parent / "data" / "rjafroc"
REL = 1e-8  # RJafroc's own tests hold these values to 1e-8


def _fixture(name):
    return json.loads((DATA / f"{name}.json").read_text())


def _pilot(name):
    ratings = Ratings.from_json(_fixture(name))
    return sizing.pilot(ratings, "ROC", tuple(ratings.modality_ids))


@pytest.mark.parametrize("analysis,cases,name", [("RRRC", 165, "dataset02_power_RRRC"), ("FRRC", 131, "dataset02_power_FRRC"),
                                                 ("RRFC", 53, "dataset02_power_RRFC")])
def test_power_for_j_readers_and_k_cases_equals_rjafrocs_in_each_analysis(analysis, cases, name):
    components, _ = _pilot("dataset02")
    ours = sizing.power(components, 10, cases, -0.043800322, analysis=analysis)
    (theirs,) = _fixture(name)["result"].values()
    key = "FRRC" if analysis == "FRRC" else analysis
    assert ours["power"] == pytest.approx(theirs[f"power{key}"], rel=REL)
    assert ours["ncp"] == pytest.approx(theirs[f"ncp{key}"], rel=REL)
    if analysis != "FRRC":
        assert ours["df"] == pytest.approx(theirs[f"df2{key}"], rel=REL)


def test_cases_for_a_power_equal_rjafrocs_with_a_given_and_with_the_observed_effect():
    """dataset03 (Franken), effect 0.05, 6 readers: 121 cases, power 0.8004469 (dataset03-RRRC.rds). dataset02 (Van
    Dyke) with its observed effect: 6 readers and 111 cases give 0.5526116, and 251 cases are needed
    (test-SsSampleSizeRoc.R)."""
    components, _ = _pilot("dataset03")
    (theirs,) = _fixture("dataset03_size_RRRC")["result"].values()
    ours = sizing.cases_for_power(components, 6, 0.05)
    assert ours["reached"] and ours["cases"] == int(theirs["KRRRC"])
    assert ours["power"] == pytest.approx(theirs["powerRRRC"], rel=1e-8)
    components, observed = _pilot("dataset02")
    assert sizing.power(components, 6, 111, observed)["power"] == pytest.approx(0.5526116, abs=5e-8)
    assert sizing.cases_for_power(components, 6, observed)["cases"] == 251


def test_non_inferiority_power_is_the_upper_tail_of_the_same_test():
    """With a margin, the one-sided test at alpha/2 of a shifted difference: its power equals the two-sided test's
    for an effect of true difference + margin less the (tiny) lower tail, and a larger margin needs fewer cases."""
    from scipy import stats

    components, _ = _pilot("dataset02")
    ni = sizing.power(components, 6, 200, 0.0, margin=0.05)
    two_sided = sizing.power(components, 6, 200, 0.05)
    lower = stats.nct.cdf(-ni["critical"], ni["df"], ni["ncp"] ** 0.5)
    assert ni["critical"] ** 2 == pytest.approx(two_sided["critical"]) and ni["df"] == pytest.approx(two_sided["df"])
    assert ni["power"] == pytest.approx(two_sided["power"] - lower, rel=1e-6)
    assert sizing.cases_for_power(components, 6, 0.0, margin=0.08)["cases"] < sizing.cases_for_power(components, 6, 0.0, margin=0.05)["cases"]


def test_the_size_verb_from_a_pilot_folder_and_from_a_file_of_components(tmp_path, capsys):
    from SyntheticContrastLib.readerstudy.rjafroc import write_jafroc_excel

    write_jafroc_excel(Ratings.from_json(_fixture("dataset03")), tmp_path / "franken.xlsx")
    assert main(["reader-study", "import-rjafroc", str(tmp_path / "franken.xlsx"), str(tmp_path / "pilot")]) == 0
    capsys.readouterr()
    assert main(["reader-study", "size", str(tmp_path / "pilot"), "--fom", "ROC", "--effect", "0.05", "--readers", "6",
                 "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| 6 | RRRC | 121 | 0.8004 | 5.00 |" in printed
    record = json.loads((tmp_path / "out" / "sizing.json").read_text())
    components = record["components"]
    (tmp_path / "vc.json").write_text(json.dumps({"VarTR": components["var_tr"], "Cov1": components["cov1"],
                                                  "Cov2": components["cov2"], "Cov3": components["cov3"],
                                                  "Var": components["var"], "KStar": components["pilot_cases"]}))
    assert main(["reader-study", "size", str(tmp_path / "vc.json"), "--effect", "0.05", "--readers", "6"]) == 0
    assert "| 6 | RRRC | 121 | 0.8004 | 5.00 |" in capsys.readouterr().out
    assert main(["reader-study", "size", str(tmp_path / "vc.json")]) == 1  # no observed difference in a file
    assert "give --effect" in capsys.readouterr().err
