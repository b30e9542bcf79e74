"""Training pairs from an archive: studies written with pydicom, with contrast tags present, absent and
contradicting, descriptions in several languages, a second CECT phase, and studies that cannot be paired."""

import csv

import pydicom
import pytest

from conftest import rewrite_series, write_dicom_series
from SyntheticContrastLib.cli import main
from SyntheticContrastLib.engine.training import load_pairs, read_pair_list
from SyntheticContrastLib.io.pairing import tag_evidence
from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

SPEC = PhantomSpec(size=128, slices=12, pixel_mm=2.8, slice_mm=5.0)


def _series(folder, volume, study_uid, description, tags=None, positions=None, frame_uid=None):
    files = write_dicom_series(folder, volume.array, spacing=volume.spacing, study_uid=study_uid, description=description,
                               positions=positions)
    def tag(k, ds):
        for key, value in (tags or {}).items():
            setattr(ds, key, value)
        if frame_uid:
            ds.FrameOfReferenceUID = frame_uid

    rewrite_series(files, tag)
    return files


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    a = make_phantom(11, SPEC)
    # Study A: tags and German descriptions agree with the measurement; one frame of reference.
    _series(root / "A" / "nativ", a.ncct, "1.2.1", "Thorax nativ", frame_uid="1.2.1.9")
    _series(root / "A" / "km", a.cect, "1.2.1", "Thorax venös mit KM", tags={"ContrastBolusAgent": "Iomeron 350"}, frame_uid="1.2.1.9")
    # Study B: no tags, no words: the blood pool decides; different frames of reference, full z overlap.
    b = make_phantom(12, SPEC)
    _series(root / "B" / "s1", b.ncct, "1.2.2", "")
    _series(root / "B" / "s2", b.cect, "1.2.2", "")
    # Study C: the words contradict the pixels (a mislabelled series): the measurement decides.
    c = make_phantom(13, SPEC)
    _series(root / "C" / "x", c.ncct, "1.2.3", "CT chest with contrast")
    _series(root / "C" / "y", c.cect, "1.2.3", "CT chest non-contrast")
    # Study D: an NCCT with an arterial and a venous CECT: ambiguous unless a phase is chosen.
    d = make_phantom(14, SPEC)
    _series(root / "D" / "plain", d.ncct, "1.2.4", "Chest plain", frame_uid="1.2.4.9")
    _series(root / "D" / "art", d.cect, "1.2.4", "Chest arterial", frame_uid="1.2.4.9")
    _series(root / "D" / "ven", d.cect, "1.2.4", "Chest portal venous", frame_uid="1.2.4.9")
    # Study E: NCCT only. Study F: NCCT and CECT that do not overlap in z.
    _series(root / "E" / "only", make_phantom(15, SPEC).ncct, "1.2.5", "Thorax natif")
    f = make_phantom(16, SPEC)
    _series(root / "F" / "upper", f.ncct, "1.2.6", "")
    _series(root / "F" / "lower", f.cect, "1.2.6", "", positions=[-200.0 - 5.0 * k for k in range(12)][::-1])
    return root


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_an_archive_becomes_pairs_with_a_reason_for_every_decision(archive, tmp_path):
    assert main(["pairs", str(archive), str(tmp_path / "pairs.csv"), "--review", "--no-progress"]) == 0
    pairs = {r["study_uid"]: r for r in _rows(tmp_path / "pairs.csv")}
    assert set(pairs) == {"1.2.1", "1.2.2", "1.2.3"}
    assert pairs["1.2.1"]["input"].endswith("A/nativ") and pairs["1.2.1"]["target"].endswith("A/km")
    assert "contrast tags: agent='Iomeron 350'" in pairs["1.2.1"]["reason"] and "same frame of reference" in pairs["1.2.1"]["reason"]
    assert "description says no contrast (nativ)" in pairs["1.2.1"]["reason"] and "CECT (venous)" in pairs["1.2.1"]["reason"]
    assert "blood pool" in pairs["1.2.2"]["reason"] and "decides" in pairs["1.2.2"]["reason"] and "z overlap 100%" in pairs["1.2.2"]["reason"]
    assert pairs["1.2.3"]["input"].endswith("C/x")  # labelled 'with contrast', measured unenhanced
    assert "the measurement decides" in pairs["1.2.3"]["reason"]
    unpaired = {r["folder"].split("archive/")[-1]: r for r in _rows(tmp_path / "pairs_unpaired.csv")}
    assert set(unpaired) == {"D/plain", "D/art", "D/ven", "E/only", "F/upper", "F/lower"}
    assert "ambiguous study: 2 NCCT/CECT pairings" in unpaired["D/art"]["reason"] and "--phase" in unpaired["D/art"]["reason"]
    assert unpaired["D/art"]["class"] == "CECT (arterial)" and unpaired["D/ven"]["class"] == "CECT (venous)"
    assert "no CECT in the study" in unpaired["E/only"]["reason"]
    assert "overlap less than 80% in z" in unpaired["F/lower"]["reason"]
    page = (tmp_path / "pairs_review.html").read_text()
    assert page.count("data:image/png;base64,") == 12 and "the measurement decides" in page
    # 'train --pairs' reads what 'pairs' wrote (with --register, as the grids of a real study differ).
    loaded = load_pairs(read_pair_list(tmp_path / "pairs.csv"), register=True)
    assert len(loaded) == 3 and loaded[0].source.shape == (12, 128, 128)
    # --register says how well: the metric before and after (lower is better), and the transform found.
    assert all(p.registration["after"] < p.registration["before"] and len(p.registration["translation_mm"]) == 3 for p in loaded)
    # The split groups by patient: these studies are all of PatientID TEST, so none can validate the others.
    assert {r["patient_id"] for r in _rows(tmp_path / "pairs.csv")} == {"TEST"} and {p.group for p in loaded} == {"TEST"}


def test_a_phase_resolves_a_study_with_two_cect_series(archive, tmp_path):
    assert main(["pairs", str(archive / "D"), str(tmp_path / "venous.csv"), "--phase", "venous", "--no-progress"]) == 0
    (pair,) = _rows(tmp_path / "venous.csv")
    assert pair["target"].endswith("D/ven")


@pytest.mark.parametrize("description,expected", [
    ("Thorax nativ", "NCCT"), ("Torace senza contrasto", "NCCT"), ("TC torax sin contraste", "NCCT"), ("胸部単純CT", "NCCT"),
    ("Thorax avec injection", "CECT"), ("Chest C+ venous", "CECT"), ("Thorax NC 5mm", "NCCT"), ("CT ABDOMEN", None),
])
def test_descriptions_in_several_languages(description, expected):
    ds = pydicom.Dataset()
    ds.SeriesDescription = description
    assert tag_evidence(ds)[0] == expected
