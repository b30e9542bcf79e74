"""Reader study: FOMs against hand-worked examples, matching, plan, statistics, crash safety, end to end."""

import csv
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon
from statsmodels.stats.contingency_tables import mcnemar

from SyntheticContrastLib.readerstudy import analysis, package, sessions
from SyntheticContrastLib.readerstudy.foms import fom_of_cases
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.errors import InputError

INF = -math.inf


def test_afroc1_and_wafroc1_by_hand_with_ties_and_unmarked_lesions():
    # Case 1: lesions rated 3 and unmarked, one NL rated 2. Case 2: one lesion rated 4, no NL.
    nl = [[2.0], []]
    ll = [[3.0, INF], [4.0]]
    # FP per case: 2 and -inf. Pairs (fp, lesion): (2,3)=1 (2,-inf)=0 (2,4)=1 (-inf,3)=1 (-inf,-inf)=0.5 (-inf,4)=1
    assert fom_of_cases("AFROC1", nl, ll) == pytest.approx(4.5 / 6)
    # wAFROC1: case-1 lesions weigh 1/2 each: fp=2 -> 0.5 + 1, fp=-inf -> 0.5 + 0.25 + 1; / (2 cases x 2 abnormal)
    assert fom_of_cases("wAFROC1", nl, ll) == pytest.approx(3.25 / 4)


def test_fom_with_a_normal_case_and_an_exact_tie():
    nl = [[2.0], [], [4.0]]  # case 3 has no lesion and an NL rated 4
    ll = [[3.0, INF], [4.0], []]
    # The extra FP of 4 beats 3 and -inf and ties with 4 (1/2).
    assert fom_of_cases("AFROC1", nl, ll) == pytest.approx(5.0 / 9)
    assert fom_of_cases("wAFROC1", nl, ll) == pytest.approx(3.75 / 6)
    assert fom_of_cases("AFROC1", [[]], [[INF]]) == 0.5  # nothing marked anywhere: a coin toss
    assert fom_of_cases("AFROC1", [[]], [[1.0]]) == 1.0


def test_fom_takes_each_cases_highest_non_lesion_mark_not_its_first():
    nl = [[1.0, 3.0], [2.0, 1.0]]  # case 1's highest NL (3) comes second
    ll = [[2.5], [4.0]]
    # FPs 3 and 2 against lesions 2.5 and 4: (2.5 > 3? no) + (4 > 3) + (2.5 > 2) + (4 > 2) = 3 of 4.
    assert fom_of_cases("AFROC1", nl, ll) == pytest.approx(3 / 4)
    assert fom_of_cases("wAFROC1", nl, ll) == pytest.approx(3 / 4)


def _lesion(lid, center, radius=5.0):
    return analysis.Lesion("c", lid, np.array(center, float), radius)


def test_matching_marks_to_lesions():
    lesions = [_lesion("A", [0, 0, 0]), _lesion("B", [20, 0, 0])]
    marks = [
        {"id": 1, "point_lps": [1, 1, 0], "rating": 2},   # on A
        {"id": 2, "point_lps": [-1, 0, 2], "rating": 4},  # also on A, higher: A is rated 4, mark 1 becomes NL
        {"id": 3, "point_lps": [50, 0, 0], "rating": 3},  # far from both: NL
        {"id": 4, "point_lps": [10, 0, 0], "rating": 1},  # 10 mm from both: outside both radii
    ]
    ll, nl = analysis.match_marks(marks, lesions)
    assert ll == {"A": 4.0, "B": INF}
    assert sorted(nl) == [1.0, 2.0, 3.0]
    ll, nl = analysis.match_marks(marks, lesions, tolerance_mm=12)
    assert ll == {"A": 4.0, "B": 1.0} and sorted(nl) == [2.0, 3.0]


@pytest.fixture
def study_file(tmp_path):
    from conftest import chest_like
    from SyntheticContrastLib.io.reading import write_volume
    from SyntheticContrastLib.io.volume import Volume

    cases = []
    for k in range(6):
        cases.append({"id": f"patient{k}", "ncct": f"p{k}_ncct.nii.gz", "scect": f"p{k}_sCECT_synthetic.nii.gz", "cect": f"p{k}_cect.nii.gz"})
        for role in ("ncct", "scect", "cect"):
            write_volume(Volume(chest_like((4, 16, 16), seed=k), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0)), tmp_path / cases[-1][role])
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"format": sessions.STUDY_FORMAT, "readers": ["R1", "R2"], "seed": 42, "cases": cases}))
    return path


def test_plan_is_reproducible_blinded_and_differs_between_readers_and_sessions(study_file, tmp_path):
    study = sessions.load_study(study_file)
    a, b = sessions.make_plan(study, "s3cret"), sessions.make_plan(study, "s3cret")
    assert [s["order"] for s in a["sessions"]] == [s["order"] for s in b["sessions"]]
    assert a["code_secret"] == "s3cret" and sessions.make_plan(study)["code_secret"] != sessions.make_plan(study)["code_secret"]
    assert [s["condition"] for s in a["sessions"]] == ["NCCT", "NCCT+sCECT", "CECT"] * 2
    orders = [tuple(s["key"][c] for c in s["order"]) for s in a["sessions"]]
    assert len(set(orders)) == len(orders)  # every reader-session has its own order
    codes = [set(s["order"]) for s in a["sessions"]]
    assert all(not (x & y) for i, x in enumerate(codes) for y in codes[i + 1:])  # codes never repeat across sessions
    assert not any("patient" in c for s in a["sessions"] for c in s["order"])
    study["seed"] = 43
    assert [s["order"] for s in sessions.make_plan(study, "s3cret")["sessions"]] != [s["order"] for s in a["sessions"]]
    package.write_plan(study_file, tmp_path / "S")
    with pytest.raises(Exception, match="a plan exists already"):
        package.write_plan(study_file, tmp_path / "S")


def test_session_marks_edit_delete_resume_and_washout(study_file, tmp_path):
    package.write_plan(study_file, tmp_path / "S")
    s1 = sessions.ReadingSession(tmp_path / "S", "R1", 1)
    first = s1.current_code()
    assert set(s1.volumes(first)) == {"ncct"}
    m = s1.add_mark(first, [1, 2, 3], 3)
    s1.add_mark(first, [4, 5, 6], 2)
    s1.edit_mark(first, m, rating=4)
    s1.delete_mark(first, m + 1)
    nxt = s1.complete_case(first)
    again = sessions.ReadingSession(tmp_path / "S", "R1", 1)
    assert again.current_code() == nxt != first
    assert [(x["id"], x["rating"]) for x in again.case_record(first)["marks"]] == [(1, 4)]
    with pytest.raises(ValueError):
        again.add_mark(nxt, [0, 0, 0], 5)
    s2 = sessions.ReadingSession(tmp_path / "S", "R1", 2)
    assert "washout" in s2.state["washout_warning"] and set(s2.volumes(s2.current_code())) == {"ncct", "scect"}


def test_a_study_may_declare_its_own_rating_scale(study_file, tmp_path):
    study = json.loads(study_file.read_text())
    study["rating_scale"] = [0, 100]
    study_file.write_text(json.dumps(study))
    package.write_plan(study_file, tmp_path / "S")
    session = sessions.ReadingSession(tmp_path / "S", "R1", 1)
    code = session.current_code()
    session.add_mark(code, [0, 0, 0], 37.5)
    with pytest.raises(ValueError, match="scale 0 to 100, got 120"):
        session.add_mark(code, [0, 0, 0], 120)
    assert [m["rating"] for m in session.case_record(code)["marks"]] == [37.5]
    study["rating_scale"] = [5, 1]
    study_file.write_text(json.dumps(study))
    with pytest.raises(InputError, match="rating_scale must be"):
        sessions.load_study(study_file)


def test_the_readers_package_names_no_case_patient_or_condition(tmp_path):
    """The key (codes to cases) stays in key/; every file the readers get, read as bytes, names no case id, patient,
    source path or condition, and each sCECT copy is still labelled synthetic, also when its source was a NIfTI."""
    from conftest import chest_like
    from SyntheticContrastLib.io.reading import synthetic_provenance, write_volume
    from SyntheticContrastLib.io.volume import Volume

    data = tmp_path / "archive" / "Mueller_Hans"
    data.mkdir(parents=True)
    cases = []
    for k in range(3):
        case = {"id": f"MRN-55501{k}", "truth": f"Mueller_Hans_{k}_rois.json"}
        for role, suffix in (("ncct", ".nrrd"), ("scect", ".nii.gz"), ("cect", ".nrrd")):
            volume = Volume(chest_like((4, 16, 16), seed=k), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
            extra = {"SyntheticContrast.synthetic": "true", "SyntheticContrast.label": "SYNTHETIC contrast-enhanced CT",
                     "SyntheticContrast.model_id": "chest-v1", "SyntheticContrast.model_sha256": "ab" * 32,
                     "SyntheticContrast.notes": f"from Mueller_Hans_{k}_ncct.nrrd of MRN-55501{k}",
                     "SyntheticContrast.date": "2026-11-30T10:00:00+00:00"} if role == "scect" else {}
            case[role] = f"Mueller_Hans_{k}_{role}{suffix}"
            write_volume(volume, data / case[role], extra)
        (data / case["truth"]).write_text(json.dumps({"format": "synthetic-contrast-rois/1", "coordinate_system": "LPS",
                                                      "lesions": [{"id": "LN1", "center": [0, 0, 2], "short_axis_mm": 8}]}))
        cases.append(case)
    study = data / "study.json"
    study.write_text(json.dumps({"format": sessions.STUDY_FORMAT, "readers": ["R1", "R2"], "seed": 3, "cases": cases}))
    assert main(["reader-study", "plan", str(study), str(tmp_path / "S")]) == 0
    readers = tmp_path / "S" / "readers"
    files = [f for f in readers.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"package.json"} and not {"plan.json", "study.json"} & {f.name for f in files}
    forbidden = [c["id"] for c in cases] + ["Mueller", "Hans", "archive", str(tmp_path), "rois", "NCCT+sCECT",
                                            '"condition"', '"key"', '"seed"', "2026-11-30"]
    for f in files:
        text = f.read_bytes()
        for word in forbidden:
            assert word.encode() not in text, f"{f.relative_to(readers)} names {word!r}"
    shown = json.loads((readers / "package.json").read_text())["sessions"]
    scect_copies = {readers / v["scect"] for s in shown for v in s["volumes"].values() if "scect" in v}
    ncct_copies = {readers / v["ncct"] for s in shown for v in s["volumes"].values() if "ncct" in v}
    assert len(scect_copies) == 3 and all(synthetic_provenance(f)["sha256"] == "ab" * 32 for f in scect_copies)
    assert len(ncct_copies) == 3 and all(synthetic_provenance(f) is None for f in ncct_copies)
    study_key, plan = package.read_key(tmp_path / "S")  # the administrator's: the key, the truth, the originals
    assert {c["id"] for c in study_key["cases"]} == {c["id"] for c in cases} and plan["sessions"][0]["key"]
    assert all(c["originals"]["ncct"] == str(data / f"Mueller_Hans_{n}_ncct.nrrd") for n, c in enumerate(study_key["cases"]))
    session = sessions.ReadingSession(readers, "R1", 2)  # the package alone opens a session
    assert set(session.volumes(session.current_code())) == {"ncct", "scect"}


def test_a_study_folder_moved_elsewhere_opens_and_analyses_to_the_same_figures(phantom_study, tmp_path):
    """Copied whole, with the original images and the original study folder out of reach, a study still opens a
    session and analyses to the same figures: nothing in it points outside itself."""
    import shutil

    moved = tmp_path / "elsewhere" / "study"
    shutil.copytree(phantom_study, moved)
    sources = phantom_study.parent
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    away = [p for p in sources.iterdir() if p.name != "S"] + [phantom_study]
    for p in away:
        p.rename(hidden / p.name)
    try:
        assert main(["reader-study", "analyze", str(moved), "--output", str(tmp_path / "report")]) == 0
        session = sessions.ReadingSession(moved, "R1", 1)
        code = session.entry["order"][0]
        assert all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in session.volumes(code).values())
    finally:
        for p in away:
            (hidden / p.name).rename(p)
    original = json.loads((phantom_study / "analysis" / "reader_study.json").read_text())
    again = json.loads((tmp_path / "report" / "reader_study.json").read_text())
    for field in ("reader_averaged_fom", "per_reader", "comparisons"):
        assert again[field] == original[field], field
    assert (json.loads((tmp_path / "report" / "significance.json").read_text())
            == json.loads((phantom_study / "analysis" / "significance.json").read_text()))


def test_a_study_planned_by_an_earlier_version_still_reads_and_reports(study_file, tmp_path):
    """The earlier layout (study.json and plan.json beside marks/, absolute paths): sessions resume on it and its
    status counts them, so a study under way is not lost by an upgrade."""
    study = sessions.load_study(study_file)
    plan = sessions.make_plan(study)
    for s in plan["sessions"]:
        s.pop("volumes", None)
    old = tmp_path / "old"
    old.mkdir()
    (old / "study.json").write_text(json.dumps(study))
    (old / "plan.json").write_text(json.dumps(plan))
    session = sessions.ReadingSession(old, "R2", 2)
    code = session.current_code()
    key = next(s["key"] for s in plan["sessions"] if s["reader"] == "R2" and s["session"] == 2)
    assert session.volumes(code) == {r: study["cases"][[c["id"] for c in study["cases"]].index(key[code])][r]
                                     for r in ("ncct", "scect")}
    session.add_mark(code, [1, 2, 3], 2)
    session.complete_case(code)
    assert (old / "marks" / "R2" / "session2" / f"{code}.json").is_file()
    rows = {(r["reader"], r["session"]): r["done"] for r in sessions.study_status(old)}
    assert rows[("R2", 2)] == 1 and rows[("R1", 1)] == 0


def test_kill_mid_session_loses_no_saved_mark(study_file, tmp_path):
    package.write_plan(study_file, tmp_path / "S")
    script = f"""
import os, signal
from SyntheticContrastLib.readerstudy.sessions import ReadingSession
s = ReadingSession({str(tmp_path / 'S')!r}, "R2", 3)
c = s.current_code()
for k in range(3):
    s.add_mark(c, [k, k, k], 1 + k)
c = s.complete_case(c)
s.add_mark(c, [9, 9, 9], 4)
s.add_mark(c, [8, 8, 8], 2)
print(c, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL
    second = res.stdout.strip()
    session = sessions.ReadingSession(tmp_path / "S", "R2", 3)
    assert session.current_code() == second
    assert [m["rating"] for m in session.case_record(second)["marks"]] == [4, 2]
    assert session.progress() == (1, 6)
    assert not list((tmp_path / "S").rglob("*.partial*"))


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory):
    """Three phantom cases with NCCT, demo-model sCECT and CECT, simulated readers, analysed."""
    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
    from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD, load_model
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom
    from SyntheticContrastLib.measurement.rois import write_rois
    from SyntheticContrastLib.io.reading import write_volume

    root = tmp_path_factory.mktemp("readers")
    model = load_model(DEFAULT_MODEL_CARD)
    cases = []
    for seed in (501, 502, 503):
        case = make_phantom(seed, PhantomSpec(size=256, slices=24, pixel_mm=1.4, slice_mm=5.0))
        scect, _ = synthesize_volume(case.ncct, model, SynthesisOptions(device="cpu"))
        names = {"ncct": case.ncct, "scect": scect, "cect": case.cect}
        entry = {"id": f"phantom{seed}", "truth": f"p{seed}_rois.json"}
        for role, vol in names.items():
            write_volume(vol, root / f"p{seed}_{role}.nii.gz")
            entry[role] = f"p{seed}_{role}.nii.gz"
        write_rois(case.annotations, root / f"p{seed}_rois.json")
        if seed == 501:  # one case brings its sCECT's uncertainty map
            write_volume(scect.with_array(np.full(scect.array.shape, 7.0, np.float32)), root / "p501_scect_sd.nii.gz")
            entry["scect_sd"] = "p501_scect_sd.nii.gz"
        cases.append(entry)
    (root / "study.json").write_text(json.dumps({"format": sessions.STUDY_FORMAT, "readers": ["R1", "R2"], "seed": 7, "cases": cases}))
    assert main(["reader-study", "plan", str(root / "study.json"), str(root / "S")]) == 0
    assert main(["reader-study", "simulate", str(root / "S"), "--seed", "3"]) == 0
    assert main(["reader-study", "analyze", str(root / "S")]) == 0
    return root / "S"


def test_end_to_end_outputs_and_the_known_direction(phantom_study, capsys):
    out = phantom_study / "analysis"
    for name in ("reader_study.json", "reader_study.md", "lesion_conspicuity.csv", "conspicuity_bars.png", "froc_curves.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "reader_study.json").read_text())
    assert summary["simulated_marks"] is True
    assert "SIMULATED" in (out / "reader_study.md").read_text()
    from matplotlib.image import imread

    from test_figures import share

    for name in ("conspicuity_bars.png", "froc_curves.png", "operating_characteristics.png"):
        assert share(imread(out / name), (1, 0, 1)) > 0.0003, name  # stamped SIMULATED in magenta
    fom = summary["reader_averaged_fom"]
    # Simulated readers see high-contrast nodes more often: real contrast must beat no contrast.
    assert fom["CECT"]["fom_wafroc1"] > fom["NCCT"]["fom_wafroc1"]
    rates = {(r["reader"], r["condition"]): r["detection_rate"] for r in summary["per_reader"]}
    assert all(rates[(rd, "CECT")] >= rates[(rd, "NCCT")] for rd in ("R1", "R2"))
    capsys.readouterr()
    assert main(["reader-study", "status", str(phantom_study)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert len(status) == 6 and all("cases  SIMULATED readers' marks" in line for line in status)


def test_lesion_rows_carry_the_scect_uncertainty_where_the_study_has_it(phantom_study):
    with open(phantom_study / "analysis" / "lesion_conspicuity.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with_sd = [r for r in rows if r["case"] == "phantom501"]
    assert with_sd and all(float(r["scect_sd_hu"]) == pytest.approx(7.0) for r in with_sd)
    assert all(r["scect_sd_hu"] == "" for r in rows if r["case"] != "phantom501")


def test_statistics_equal_scipy_and_statsmodels_directly(phantom_study):
    summary = json.loads((phantom_study / "analysis" / "reader_study.json").read_text())
    with open(phantom_study / "analysis" / "lesion_conspicuity.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for cmp in summary["comparisons"]:
        get = lambda cond: np.array([int(r["conspicuity"]) for r in rows if r["reader"] == cmp["reader"] and r["condition"] == cond])
        a, b = get(cmp["a"]), get(cmp["b"])
        table = [[int(((a > 0) & (b > 0)).sum()), int(((a > 0) & (b == 0)).sum())],
                 [int(((a == 0) & (b > 0)).sum()), int(((a == 0) & (b == 0)).sum())]]
        assert cmp["mcnemar_table"] == table
        assert cmp["mcnemar_p"] == pytest.approx(mcnemar(table, exact=True).pvalue)
        if np.any(a != b):
            assert cmp["wilcoxon"]["p"] == pytest.approx(wilcoxon(a, b).pvalue)


def test_the_plan_records_the_model_and_a_session_refuses_another(tmp_path, tiny_model_card, monkeypatch):
    from conftest import TINY, chest_like, tiny_generator
    from SyntheticContrastLib.engine import store
    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
    from SyntheticContrastLib.engine.models import ModelCard, load_model, save_model
    from SyntheticContrastLib.engine.encoding import WindowEncoding
    from SyntheticContrastLib.io.reading import write_volume
    from SyntheticContrastLib.io.volume import Volume
    from SyntheticContrastLib.errors import InputError

    monkeypatch.setenv(store.USER_ENV, str(tmp_path / "store"))
    store.install(tiny_model_card, "chest-v1")
    other_card = save_model(tiny_generator(seed=5, config=TINY), ModelCard(
        model_id="tiny-other", architecture={}, encoding=WindowEncoding(), window={"z": 16, "y": 32, "x": 32}, default_stride=4,
        intended_use="tests only", training_data="none", weights_file=""), tmp_path / "other" / "tiny-other.json")
    cases = []
    for k, suffix in enumerate((".nrrd", ".nii.gz")):  # NRRD keeps the full sha256, NIfTI a 12-hex prefix in its label
        ncct = Volume(np.round(chest_like((16, 32, 32), seed=k)), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0))
        scect, _ = synthesize_volume(ncct, load_model("chest-v1"), SynthesisOptions(device="cpu"))
        write_volume(ncct, tmp_path / f"c{k}_ncct{suffix}")
        write_volume(scect, tmp_path / f"c{k}_sCECT_synthetic{suffix}")
        write_volume(ncct, tmp_path / f"c{k}_cect{suffix}")
        cases.append({"id": f"case{k}", "ncct": f"c{k}_ncct{suffix}", "scect": f"c{k}_sCECT_synthetic{suffix}", "cect": f"c{k}_cect{suffix}"})
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"format": sessions.STUDY_FORMAT, "readers": ["R1"], "cases": cases, "model": "chest-v1"}))
    plan = package.write_plan(study, tmp_path / "S")
    assert plan["model"] == {"name": "chest-v1", "model_id": "tiny-test", "sha256": json.loads(tiny_model_card.read_text())["sha256"]}
    session = sessions.ReadingSession(tmp_path / "S", "R1", 2)  # NCCT+sCECT
    assert all(session.volumes(code) for code in session.entry["order"])
    # A different model installed under the planned name: no session runs.
    store.remove("chest-v1")
    store.install(other_card, "chest-v1")
    with pytest.raises(InputError, match=r"planned with model chest-v1 \(sha256 \w{12}\), but chest-v1 is now sha256"):
        sessions.ReadingSession(tmp_path / "S", "R1", 2)
    store.remove("chest-v1")
    store.install(tiny_model_card, "chest-v1")
    # An sCECT remade with another model after planning: its case is refused, in the session and in a new plan.
    ncct = Volume(np.round(chest_like((16, 32, 32), seed=1)), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0))
    remade, _ = synthesize_volume(ncct, load_model(other_card), SynthesisOptions(device="cpu"))
    write_volume(remade, tmp_path / "c1_sCECT_synthetic.nii.gz")
    session = sessions.ReadingSession(tmp_path / "S", "R1", 2)
    _, key = package.read_key(tmp_path / "S")
    code = next(c for c, case_id in key["sessions"][1]["key"].items() if case_id == "case1")
    write_volume(remade, session.volumes(code)["scect"])  # the package's copy replaced on the workstation
    with pytest.raises(InputError, match="was made by another model .*a session refuses a different model"):
        session.volumes(code)
    with pytest.raises(InputError, match="case case1 \\(scect\\): .*was made by another model"):
        package.write_plan(study, tmp_path / "S2")


def test_analyze_with_a_margin_reports_non_inferiority_and_refuses_a_margin_off_the_scale(phantom_study, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["reader-study", "analyze", str(phantom_study), "--output", str(out), "--margin", "0.05"]) == 0
    text = (out / "significance.md").read_text()
    assert "margin 0.05 (random readers and cases)" in text and "| NCCT+sCECT is worse than CECT by 0.05 or more |" in text
    assert json.loads((out / "significance.json").read_text())["margin"]["value"] == 0.05
    with pytest.raises(SystemExit) as exit_info:
        main(["reader-study", "analyze", str(phantom_study), "--output", str(out), "--margin", "5"])
    assert exit_info.value.code == 2 and "a margin is a difference of figures of merit, between 0 and 1; got 5" in capsys.readouterr().err
