"""Training pairs from a hospital archive: every CT series classified as NCCT, CECT (with its phase where it can
be told) or other, from contrast tags, descriptions in several languages and the measured blood-pool HU; the NCCT
and CECT of one study paired when they share a frame of reference or overlap in z. Every decision says why."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, SyntheticContrastError
from ..fileio import atomic_write_csv, atomic_write_text
from .dicom_series import CT_IMAGES, dicom_series_in

#: Blood-pool HU (trust/ood.py's estimate) at or above which a series is contrast-enhanced, and below which it is not.
ENHANCED_HU, UNENHANCED_HU = 120.0, 80.0
ARTERIAL_HU = 250.0
#: Lower-case keywords of SeriesDescription / ProtocolName; '\b' keeps 'nc' from matching inside 'thorax nc5'.
CECT_WORDS = ["contrast", "contraste", "kontrast", "c\\+", "cect", "km", "mit km", "avec", "con contrasto", "iv", "angio", "cta",
              "enhanced", "post", "arterial", "arteriell", "artériel", "venous", "venös", "venos", "veineux", "portal", "pv",
              "delayed", "spät", "tardif", "造影", "增强"]
NCCT_WORDS = ["non[- ]?contrast", "noncontrast", "without contrast", "w/o", "nc", "ncct", "native?", "nativ", "plain", "ohne km",
              "ohne kontrast", "sans injection", "sans contraste", "sin contraste", "senza contrasto", "unenhanced", "pre", "単純", "平扫"]
PHASE_WORDS = {"arterial": ["arterial", "arteriell", "artériel", "cta", "angio"], "venous": ["venous", "venös", "venos", "veineux", "portal", "pv"],
               "delayed": ["delayed", "spät", "tardif"]}


def _matches(words, text: str) -> list[str]:
    """The words of ``text`` that the patterns match, each once, as they are written there."""
    found = []
    for word in words:
        # Latin words need word boundaries ('nc' is not in 'sync'); Chinese and Japanese are written without spaces.
        pattern = rf"(?<![a-z0-9]){word}(?![a-z0-9])" if word.isascii() else word
        match = re.search(pattern, text)
        if match and match.group(0) not in found:
            found.append(match.group(0))
    return found


@dataclass
class Series:
    folder: str
    series_uid: str
    study_uid: str = ""
    frame_uid: str = ""
    patient_id: str = ""  # what a training split groups by: a patient's studies are never on both sides
    description: str = ""
    z_range: tuple[float, float] = (0.0, 0.0)
    blood_hu: float | None = None
    cls: str = "other"  # NCCT, CECT or other
    phase: str = ""
    reasons: list[str] = field(default_factory=list)
    thumbnail: np.ndarray | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def tag_evidence(ds) -> tuple[str | None, list[str]]:
    """What the header says: ('CECT' | 'NCCT' | None, why). Contrast tags outrank words; words that disagree say nothing."""
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    route = str(ds.get("ContrastBolusRoute", "") or "").strip()
    start = str(ds.get("ContrastBolusStartTime", "") or "").strip()
    if agent or route or start:
        return "CECT", [f"contrast tags: {', '.join(f'{k}={v!r}' for k, v in (('agent', agent), ('route', route), ('start', start)) if v)}"]
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")).lower()
    ncct = _matches(NCCT_WORDS, text)
    for negation in ncct:  # 'sin contraste' and 'without contrast' hold the word they deny
        text = text.replace(negation, " ")
    cect = _matches(CECT_WORDS, text)
    if cect and not ncct:
        return "CECT", [f"description says contrast ({', '.join(cect)})"]
    if ncct and not cect:
        return "NCCT", [f"description says no contrast ({', '.join(ncct)})"]
    if cect and ncct:
        return None, [f"description is contradictory ({', '.join(cect)} vs {', '.join(ncct)})"]
    return None, ["no contrast tags or keywords"]


def _phase(ds, blood_hu) -> str:
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName")).lower()
    for phase, words in PHASE_WORDS.items():
        if _matches(words, text):
            return phase
    if blood_hu is not None:
        return "arterial (from HU)" if blood_hu >= ARTERIAL_HU else "venous (from HU)"
    return "unknown"


def classify(entry: dict) -> Series:
    """One series: read it, measure its blood pool, and weigh the tags against the measurement."""
    from ..trust.ood import measure
    from .reading import read_volume

    series = Series(entry["folder"], entry["series_uid"], description=entry.get("description", ""))
    if entry.get("kind") != CT_IMAGES:
        series.reasons.append(f"not a CT image series ({entry.get('kind')})")
        return series
    ds = entry["header"]
    series.study_uid, series.frame_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("FrameOfReferenceUID", ""))
    series.patient_id = str(ds.get("PatientID", "") or "").strip()
    try:
        volume = read_volume(entry["folder"], series_uid=entry["series_uid"])
    except SyntheticContrastError as exc:
        series.reasons.append(f"cannot be read: {exc}")
        return series
    z = [volume.index_to_physical((0, 0, k))[2] for k in (0, volume.array.shape[0] - 1)]
    series.z_range = (float(min(z)), float(max(z)))
    series.blood_hu = float(measure(volume)["blood_pool_hu"])
    series.thumbnail = volume.array[volume.array.shape[0] // 2]
    tagged, why = tag_evidence(ds)
    measured = "CECT" if series.blood_hu >= ENHANCED_HU else "NCCT" if series.blood_hu < UNENHANCED_HU else None
    hu_text = f"blood pool {series.blood_hu:.0f} HU"
    if measured and tagged and measured != tagged:
        series.cls, series.reasons = measured, why + [f"{hu_text} says {measured}: the measurement decides"]
    elif measured:
        series.cls, series.reasons = measured, why + [f"{hu_text} agrees" if tagged else f"{hu_text} decides"]
    elif tagged:
        series.cls, series.reasons = tagged, why + [f"{hu_text} is between {UNENHANCED_HU:.0f} and {ENHANCED_HU:.0f}: the tags decide"]
    else:
        series.reasons = why + [f"{hu_text} is between {UNENHANCED_HU:.0f} and {ENHANCED_HU:.0f}: ambiguous"]
    if series.cls == "CECT":
        series.phase = _phase(ds, series.blood_hu)
    return series


def z_overlap(a: Series, b: Series) -> float:
    """Shared z extent as a share of the shorter series."""
    shared = min(a.z_range[1], b.z_range[1]) - max(a.z_range[0], b.z_range[0])
    shorter = min(a.z_range[1] - a.z_range[0], b.z_range[1] - b.z_range[0])
    return max(0.0, shared) / shorter if shorter > 0 else 0.0


def find_series(archive: Path) -> list[dict]:
    """Every DICOM series under ``archive``, with the folder that holds it."""
    found = []
    for folder in sorted({p.parent for p in Path(archive).rglob("*") if p.is_file()}):
        for entry in dicom_series_in(folder):
            found.append({**entry, "folder": str(folder)})
    return found


def pair_studies(series: list[Series], min_overlap: float = 0.8, phase: str | None = None) -> tuple[list[dict], list[dict]]:
    """(pairs, unpaired): per study, one NCCT with one CECT that shares its frame of reference or overlaps it in z
    by ``min_overlap``. Studies with several candidates are listed, not guessed; ``phase`` picks a CECT phase."""
    pairs, unpaired, used = [], [], set()
    studies = {}
    for s in series:
        studies.setdefault(s.study_uid, []).append(s)
    for study_uid, members in sorted(studies.items()):
        ncct = [s for s in members if s.cls == "NCCT"]
        cect = [s for s in members if s.cls == "CECT" and (phase is None or s.phase.startswith(phase))]
        matches = []
        for n in ncct:
            for c in cect:
                overlap = z_overlap(n, c)
                if n.frame_uid and n.frame_uid == c.frame_uid:
                    matches.append((n, c, f"same frame of reference, z overlap {overlap:.0%}"))
                elif overlap >= min_overlap:
                    matches.append((n, c, f"z overlap {overlap:.0%} (different frames of reference)"))
        if len(matches) == 1:
            n, c, why = matches[0]
            pairs.append({"input": n.folder, "target": c.folder, "study_uid": study_uid,
                          "reason": f"NCCT: {n.reason} | CECT ({c.phase}): {c.reason} | paired: {why}",
                          "input_series": n.series_uid, "target_series": c.series_uid, "patient_id": n.patient_id})
            used |= {id(n), id(c)}
            continue
        if len(matches) > 1:
            why = (f"ambiguous study: {len(matches)} NCCT/CECT pairings ("
                   + ", ".join(f"{m[0].description or m[0].series_uid} + {m[1].description or m[1].series_uid} [{m[1].phase}]" for m in matches)
                   + "); choose a phase with --phase, or pair by hand")
        elif not ncct or not cect:
            why = "no NCCT in the study" if not ncct else "no CECT in the study" + (f" of phase {phase}" if phase else "")
        else:
            why = f"NCCT and CECT share no frame of reference and overlap less than {min_overlap:.0%} in z"
        for s in members:
            if id(s) not in used:
                s.reasons.append(why)
    for s in series:
        if id(s) not in used:
            unpaired.append({"folder": s.folder, "series_uid": s.series_uid, "study_uid": s.study_uid, "description": s.description,
                             "class": s.cls + (f" ({s.phase})" if s.phase else ""),
                             "blood_pool_hu": "" if s.blood_hu is None else f"{s.blood_hu:.0f}", "reason": s.reason})
    return pairs, unpaired


PAIR_FIELDS = ("input", "target", "study_uid", "reason", "input_series", "target_series", "patient_id")
UNPAIRED_FIELDS = ("folder", "series_uid", "study_uid", "description", "class", "blood_pool_hu", "reason")


def write_pairs(archive: Path, out_csv: Path, review: bool = False, min_overlap: float = 0.8, phase: str | None = None,
                progress=None) -> tuple[list[dict], list[dict]]:
    """Classify and pair every series under ``archive``; write OUT.csv, OUT_unpaired.csv and, with ``review``,
    OUT_review.html. Paths in the CSVs are relative to OUT.csv's folder when they can be."""
    archive, out_csv = Path(archive), Path(out_csv)
    if not archive.is_dir():
        raise InputError(archive, "is not a folder of DICOM studies")
    entries = find_series(archive)
    if not entries:
        raise InputError(archive, "holds no DICOM series")
    series = []
    for k, entry in enumerate(entries):
        series.append(classify(entry))
        if progress:
            progress(k + 1, len(entries))
    pairs, unpaired = pair_studies(series, min_overlap, phase)
    base = out_csv.resolve().parent

    def rel(path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(base))
        except ValueError:
            return str(Path(path).resolve())

    for row in pairs:
        row["input"], row["target"] = rel(row["input"]), rel(row["target"])
    for row in unpaired:
        row["folder"] = rel(row["folder"])
    atomic_write_csv(out_csv, pairs, PAIR_FIELDS)
    atomic_write_csv(out_csv.with_name(out_csv.stem + "_unpaired.csv"), unpaired, UNPAIRED_FIELDS)
    if review:
        atomic_write_text(out_csv.with_name(out_csv.stem + "_review.html"), review_page(series, pairs))
    return pairs, unpaired


def _thumbnail_png(array: np.ndarray | None) -> str:
    if array is None:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, np.clip((array + 125.0) / 350.0, 0, 1), cmap="gray", vmin=0, vmax=1, format="png")  # W350/L50
    return base64.b64encode(buffer.getvalue()).decode()


def review_page(series: list[Series], pairs: list[dict]) -> str:
    """One HTML page, a row per series with its central slice (W350/L50), class and reasons, for a person to check."""
    paired = {p["input_series"] for p in pairs} | {p["target_series"] for p in pairs}
    rows = []
    for s in sorted(series, key=lambda s: (s.study_uid, s.cls, s.folder)):
        image = _thumbnail_png(s.thumbnail)
        cell = f'<img src="data:image/png;base64,{image}" width="160">' if image else ""
        rows.append(f"<tr><td>{cell}</td><td>{html.escape(s.study_uid)}</td><td>{html.escape(s.folder)}<br>{html.escape(s.description)}</td>"
                    f"<td><b>{s.cls}</b> {html.escape(s.phase)}<br>{'paired' if s.series_uid in paired else 'not paired'}</td>"
                    f"<td>{'' if s.blood_hu is None else f'{s.blood_hu:.0f}'}</td><td>{html.escape(s.reason)}</td></tr>")
    return ("<!doctype html><meta charset='utf-8'><title>SyntheticContrast pairing review</title>"
            "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px;border-bottom:1px solid #ccc}</style>"
            "<h1>Series classification for training pairs</h1><p>Check each class; correct the CSV by hand where it is wrong.</p>"
            "<table><tr><th>central slice</th><th>study</th><th>series</th><th>class</th><th>blood pool HU</th><th>why</th></tr>"
            + "".join(rows) + "</table>\n")
