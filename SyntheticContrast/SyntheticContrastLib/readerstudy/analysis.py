"""Analysing a reader study: marks matched to the ground-truth lesions, detection (McNemar) and conspicuity (Wilcoxon)
per reader as in the paper, and the ratings gathered for the figures of merit and the significance analysis."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_csv, atomic_write_text
from ..measurement.rois import parse_rois
from .foms import FOMS, fom_of_cases
from .ratings import Ratings
from .package import read_key, readers_folder
from .sessions import ReadingSession


@dataclass
class Lesion:
    case: str
    lesion_id: str
    center: np.ndarray
    radius_mm: float
    weight: float | None = None  # from the truth ROI's "weight"; equal weights when absent


def truth_lesions(study: dict) -> dict[str, list[Lesion]]:
    out = {}
    for case in study["cases"]:
        lesions = []
        if case.get("truth"):
            data = json.loads(Path(case["truth"]).read_text())
            for les in parse_rois(data, case["truth"]):
                lesions.append(Lesion(case["id"], les.lesion_id, les.center, les.extra["short_axis_mm"] / 2, les.extra.get("weight")))
        out[case["id"]] = lesions
    return out


def lesion_uncertainty(study: dict, truth: dict[str, list[Lesion]]) -> dict[tuple[str, str], float]:
    """Mean SD (HU) of the sCECT's uncertainty map in each truth lesion's circle (0.9 x short axis, as for CNR),
    for cases whose study entry names the map as 'scect_sd'; readers' misses can then be set beside it."""
    from ..io.reading import read_volume
    from ..measurement.cnr import circle_roi

    out = {}
    for case in study["cases"]:
        if not case.get("scect_sd"):
            continue
        sd = read_volume(case["scect_sd"], check_hu=False)
        for lesion in truth[case["id"]]:
            roi = circle_roi(sd, lesion.center, 0.9 * 2 * lesion.radius_mm, lesion.lesion_id)
            out[(case["id"], lesion.lesion_id)] = float(sd.array[roi.slice_index][roi.mask].mean())
    return out


def match_marks(marks: list[dict], lesions: list[Lesion], tolerance_mm: float | None = None):
    """Lesion ratings (-inf when unmarked) and non-lesion ratings for one case.

    A mark within the lesion radius (or ``tolerance_mm``) of a lesion centre can localise it. Marks are
    taken highest rating first; each localises the nearest reachable lesion that no higher-rated mark
    has localised. A mark with no such lesion is a non-lesion mark.
    """
    ll = {les.lesion_id: -math.inf for les in lesions}
    nl = []
    for m in sorted(marks, key=lambda m: (-m["rating"], m["id"])):
        p = np.asarray(m["point_lps"], float)
        reachable = sorted(
            (float(np.linalg.norm(p - les.center)), les.lesion_id) for les in lesions
            if np.linalg.norm(p - les.center) <= (tolerance_mm if tolerance_mm is not None else les.radius_mm)
        )
        free = [lid for _, lid in reachable if ll[lid] == -math.inf]
        if free:
            ll[free[0]] = float(m["rating"])
        else:
            nl.append(float(m["rating"]))
    return ll, nl


def froc_points(nl_by_case, ll_by_case) -> list[tuple[float, float]]:
    """(NLF, LLF) at each rating given, from strictest to laxest threshold, starting at (0, 0): any rating scale."""
    n_cases = len(nl_by_case)
    n_les = sum(len(ll) for ll in ll_by_case)
    points = [(0.0, 0.0)]
    given = {r for nl in nl_by_case for r in nl} | {r for ll in ll_by_case for r in ll if r != -math.inf}
    for t in sorted(given, reverse=True):
        nlf = sum(1 for nl in nl_by_case for r in nl if r >= t) / max(n_cases, 1)
        llf = sum(1 for ll in ll_by_case for r in ll if r >= t) / max(n_les, 1)
        points.append((nlf, llf))
    return points


def collect(study_dir, tolerance_mm=None, readers_dir=None) -> dict:
    """Per reader and condition: lesion ratings and NL ratings per case (case order = study order). The key's plan
    joins the readers' marks (``readers_dir``, else the study folder's readers/) to cases and conditions."""
    study, plan = read_key(study_dir)
    readers = readers_folder(readers_dir or study_dir)
    truth = truth_lesions(study)
    data, simulated = {}, False
    for s in plan["sessions"]:
        session = ReadingSession(readers, s["reader"], s["session"])
        by_case = {}
        for code, case_id in s["key"].items():
            record = session.case_record(code)
            simulated |= any(m.get("simulated") for m in record["marks"])
            by_case[case_id] = match_marks(record["marks"], truth[case_id], tolerance_mm)
        data[(s["reader"], s["condition"])] = by_case
    return {"study": study, "plan": plan, "truth": truth, "data": data, "simulated": simulated}


def study_ratings(c: dict) -> Ratings:
    """The collected marks as Ratings: modalities are the conditions, non-diseased cases first, lesion weights from
    the truth (equal where a case gives none)."""
    study, truth, data = c["study"], c["truth"], c["data"]
    readers = list(study["readers"])
    conditions = [cond["id"] for cond in study["conditions"]]
    cases = [case["id"] for case in study["cases"]]
    normal, abnormal = [cid for cid in cases if not truth[cid]], [cid for cid in cases if truth[cid]]
    order = normal + abnormal
    max_nl = max([len(by_case[cid][1]) for by_case in data.values() for cid in cases] + [1])
    max_ll = max([len(truth[cid]) for cid in abnormal] + [1])
    nl = np.full((len(conditions), len(readers), len(order), max_nl), -np.inf)
    ll = np.full((len(conditions), len(readers), len(abnormal), max_ll), -np.inf)
    for i, cond in enumerate(conditions):
        for j, reader in enumerate(readers):
            by_case = data[(reader, cond)]
            for k, cid in enumerate(order):
                marks = sorted(by_case[cid][1], reverse=True)
                nl[i, j, k, :len(marks)] = marks
            for k, cid in enumerate(abnormal):
                ll[i, j, k, :len(truth[cid])] = [by_case[cid][0][les.lesion_id] for les in truth[cid]]
    weights = np.zeros((len(abnormal), max_ll))
    for k, cid in enumerate(abnormal):
        given = [les.weight for les in truth[cid]]
        if all(w is not None for w in given):
            weights[k, :len(given)] = given
    return Ratings(nl, ll, [len(truth[cid]) for cid in abnormal], weights, conditions, readers, order,
                   "FROC")


def choose_fom(requested: str | None, ratings: Ratings) -> tuple[str, str]:
    """The figure of merit and why: as asked, else wAFROC (RJafroc's default), or wAFROC1 when the study has no
    non-diseased case, where wAFROC is not defined."""
    k1 = ratings.shape[2]
    if requested:
        if requested not in FOMS:
            raise InputError(None, f"unknown figure of merit {requested}; one of {', '.join(FOMS)}")
        if k1 == 0 and requested in ("wAFROC", "AFROC", "ROC"):
            raise InputError(None, f"{requested} needs non-diseased cases and this study has none; use wAFROC1 or AFROC1")
        return requested, "as requested"
    if k1 == 0:
        return "wAFROC1", "wAFROC needs non-diseased cases and this study has none, so wAFROC1 is used"
    return "wAFROC", "the default, as in RJafroc"


def imported_ratings(study_dir) -> Ratings | None:
    """The ratings of a study imported from RJafroc's format, or None for a study read here."""
    from ..fileio import read_json_object
    from .rjafroc import RATINGS_FILE

    path = Path(study_dir) / RATINGS_FILE
    if not path.exists():
        return None
    try:
        return Ratings.from_json(read_json_object(path, "an imported ratings file"))
    except (KeyError, TypeError, ValueError) as exc:  # a field missing or of the wrong shape
        raise InputError(path, f"is not an imported ratings file this version reads: {type(exc).__name__}: {exc}") from exc


def study_ratings_of(study_dir, tolerance_mm=None, readers_dir=None) -> Ratings:
    """Any study folder's ratings: imported, or collected from its readers' marks."""
    imported = imported_ratings(study_dir)
    return imported if imported is not None else study_ratings(collect(study_dir, tolerance_mm, readers_dir))


def analyze(study_dir, out_dir, tolerance_mm: float | None = None, fom: str | None = None,
            export_rjafroc: str | Path | None = None, readers_dir=None, margin: float | None = None) -> dict:
    """Reader statistics and reports: CSV, JSON, Markdown summary, conspicuity bars and FROC curves, and the
    significance analysis (significance.json, significance.md, operating characteristics per modality). A study
    imported from RJafroc's format has ratings only: it gets the significance analysis."""
    from scipy.stats import wilcoxon
    from statsmodels.stats.contingency_tables import mcnemar

    from .report import write_significance
    from .rjafroc import write_jafroc_excel

    out_dir = Path(out_dir)
    ratings = imported_ratings(study_dir)
    if ratings is not None:
        name, why = choose_fom(fom, ratings)
        significance = write_significance(ratings, name, why, out_dir, margin=margin)
        if export_rjafroc:
            write_jafroc_excel(ratings, export_rjafroc)
        return {"imported": True, "significance": significance}

    c = collect(study_dir, tolerance_mm, readers_dir)
    study, truth, data = c["study"], c["truth"], c["data"]
    readers = list(study["readers"])
    conditions = [cond["id"] for cond in study["conditions"]]
    cases = [case["id"] for case in study["cases"]]
    lesion_keys = [(cid, les.lesion_id) for cid in cases for les in truth[cid]]
    sd_at = lesion_uncertainty(study, truth)
    rating = {}  # (reader, condition) -> conspicuity per lesion, 0 = missed
    rows = []
    for (reader, cond), by_case in data.items():
        values = []
        for cid, lid in lesion_keys:
            r = by_case[cid][0][lid]
            values.append(0 if r == -math.inf else int(r) if float(r).is_integer() else r)  # missed = 0, as in the paper
            rows.append({"reader": reader, "condition": cond, "case": cid, "lesion": lid, "conspicuity": values[-1],
                         "scect_sd_hu": sd_at.get((cid, lid), "")})
        rating[(reader, cond)] = np.array(values)
    summary = {"simulated_marks": c["simulated"], "lesions": len(lesion_keys), "cases": len(cases), "per_reader": [],
               "comparisons": [], "reader_averaged_fom": {}}
    for reader in readers:
        for cond in conditions:
            by_case = data[(reader, cond)]
            nl = [by_case[cid][1] for cid in cases]
            ll = [[by_case[cid][0][les.lesion_id] for les in truth[cid]] for cid in cases]
            detected = int((rating[(reader, cond)] > 0).sum())
            summary["per_reader"].append({
                "reader": reader, "condition": cond, "detected": detected, "lesions": len(lesion_keys),
                "detection_rate": detected / max(len(lesion_keys), 1),
                "mean_conspicuity": float(rating[(reader, cond)].mean()) if lesion_keys else float("nan"),
                "non_lesion_marks": sum(len(x) for x in nl),
                "fom_afroc1": fom_of_cases("AFROC1", nl, ll), "fom_wafroc1": fom_of_cases("wAFROC1", nl, ll), "froc": froc_points(nl, ll),
            })
        for a, b in combinations(conditions, 2):
            ra, rb = rating[(reader, a)], rating[(reader, b)]
            table = [[int(((ra > 0) & (rb > 0)).sum()), int(((ra > 0) & (rb == 0)).sum())],
                     [int(((ra == 0) & (rb > 0)).sum()), int(((ra == 0) & (rb == 0)).sum())]]
            mc = mcnemar(table, exact=True)
            if np.any(ra != rb):
                w = wilcoxon(ra, rb)
                wil = {"statistic": float(w.statistic), "p": float(w.pvalue)}
            else:
                wil = {"statistic": float("nan"), "p": float("nan"), "note": "identical ratings: no test"}
            summary["comparisons"].append({"reader": reader, "a": a, "b": b, "mcnemar_table": table,
                                           "mcnemar_p": float(mc.pvalue), "wilcoxon": wil})
    for cond in conditions:
        per = [r for r in summary["per_reader"] if r["condition"] == cond]
        summary["reader_averaged_fom"][cond] = {k: float(np.mean([r[k] for r in per])) for k in ("fom_afroc1", "fom_wafroc1")}

    ratings = study_ratings(c)
    name, why = choose_fom(fom, ratings)
    significance = write_significance(ratings, name, why, out_dir, simulated=c["simulated"], margin=margin)
    summary["significance"] = {"fom": name, "RRRC": {k: significance["RRRC"][k] for k in ("F", "ndf", "ddf", "p")},
                               "modality_means": dict(zip(ratings.modality_ids, significance["modality_means"]))}
    if export_rjafroc:
        write_jafroc_excel(ratings, export_rjafroc)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_dir / "lesion_conspicuity.csv", rows, ["reader", "condition", "case", "lesion", "conspicuity", "scect_sd_hu"])
    atomic_write_text(out_dir / "reader_study.json", json.dumps(summary, indent=2, default=float) + "\n")
    atomic_write_text(out_dir / "reader_study.md", summary_markdown(summary))
    _plots(summary, rating, readers, conditions, out_dir)
    return summary


def summary_markdown(summary: dict) -> str:
    lines = ["# Reader study summary", ""]
    if summary["simulated_marks"]:
        lines += ["**These marks come from SIMULATED readers (pipeline check), not from radiologists.**", ""]
    lines += [f"{summary['lesions']} lesions in {summary['cases']} cases.", "",
              "| reader | condition | detected | detection rate | mean conspicuity (missed = 0) | NL marks | AFROC1 FOM | wAFROC1 FOM |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["per_reader"]:
        lines.append(f"| {r['reader']} | {r['condition']} | {r['detected']}/{r['lesions']} | {100 * r['detection_rate']:.0f}% | "
                     f"{r['mean_conspicuity']:.2f} | {r['non_lesion_marks']} | {r['fom_afroc1']:.3f} | {r['fom_wafroc1']:.3f} |")
    lines += ["", "| reader | comparison | McNemar P (detection) | Wilcoxon P (conspicuity) |", "|---|---|---|---|"]
    for cmp in summary["comparisons"]:
        lines.append(f"| {cmp['reader']} | {cmp['a']} vs {cmp['b']} | {cmp['mcnemar_p']:.3g} | {cmp['wilcoxon']['p']:.3g} |")
    lines += ["", "Reader-averaged FOM: " + ", ".join(
        f"{cond} AFROC1 {v['fom_afroc1']:.3f} / wAFROC1 {v['fom_wafroc1']:.3f}" for cond, v in summary["reader_averaged_fom"].items()),
        "", _significance_line(summary), ""]
    return "\n".join(lines)


def _significance_line(summary: dict) -> str:
    sig = summary.get("significance")
    if not sig:
        return ""
    r = sig["RRRC"]
    return (f"Significance across readers and cases (Obuchowski-Rockette-Hillis, random readers and cases, {sig['fom']}): "
            f"F({r['ndf']}, {r['ddf']:.1f}) = {r['F']:.3f}, P = {r['p']:.4g}; details in significance.md.")


def _plots(summary, rating, readers, conditions, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..measurement.figures import save_figure

    colours = ["white", "#c6dbef", "#6baed6", "#2171b5", "#08306b"]
    fig, axes = plt.subplots(1, len(readers), figsize=(4.5 * len(readers), 4), squeeze=False)
    for ax, reader in zip(axes[0], readers):
        bottom = np.zeros(len(conditions))
        for score in range(5):
            counts = np.array([(rating[(reader, c)] == score).sum() for c in conditions])
            ax.bar(conditions, counts, bottom=bottom, color=colours[score], edgecolor="black",
                   hatch="//" if score == 0 else None, label="0 (missed)" if score == 0 else str(score))
            bottom += counts
        ax.set_title(f"Reader {reader}: conspicuity")
        ax.set_ylabel("lymph nodes")
    axes[0][-1].legend(title="rating", fontsize=8)
    save_figure(fig, out_dir / "conspicuity_bars.png", simulated=summary["simulated_marks"])
    fig, axes = plt.subplots(1, len(readers), figsize=(4.5 * len(readers), 4), squeeze=False)
    for ax, reader in zip(axes[0], readers):
        for r in summary["per_reader"]:
            if r["reader"] == reader:
                x, y = zip(*r["froc"])
                ax.plot(x, y, marker="o", label=r["condition"])
        ax.set_xlabel("non-lesion localisations per case")
        ax.set_ylabel("lesion localisation fraction")
        ax.set_title(f"Reader {reader}: FROC")
        ax.legend(fontsize=8)
    save_figure(fig, out_dir / "froc_curves.png", simulated=summary["simulated_marks"])


