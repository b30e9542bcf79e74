"""CNR over a study: every case's lesions measured as the paper does, pooled and per case, with paired tests across
cases (the patient is the unit, so one patient's many nodes do not count as many patients) and a figure."""

from __future__ import annotations

import csv
import json
from itertools import combinations
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_csv, atomic_write_text
from .stats import FEW_CASES, median_iqr, paired_comparison


def read_cases(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a cases CSV (case, rois, one column per volume) with paths made absolute, and the volume names."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"case", "rois"} <= set(rows[0]):
        raise InputError(path, "the cases CSV needs the columns case and rois, and one column per volume")
    names = [c for c in rows[0] if c not in ("case", "rois")]
    if not names:
        raise InputError(path, "the cases CSV names no volume column (such as NCCT,sCECT,CECT)")
    base = path.parent
    return [{**r, **{k: str(base / r[k]) for k in ("rois", *names)}} for r in rows], names


def cnr_study(cases_csv: Path, out_dir: Path) -> str:
    """Measure every case, write cnr_per_lesion.csv, cnr_per_case.csv, cnr.json, cnr_study.md and cnr_study.png
    (with an SVG), and return the Markdown."""
    from ..io.reading import read_volume
    from .cnr import measure_cnr
    from .rois import read_rois

    cases, names = read_cases(Path(cases_csv))
    lesion_rows, case_rows = [], []
    for case in cases:
        rows = measure_cnr({n: read_volume(case[n], check_hu=False) for n in names}, read_rois(case["rois"]))
        for r in rows:
            r["case"] = case["case"]
        lesion_rows += rows
        for n in names:
            good = [r["cnr"] for r in rows if r["volume"] == n and not r["error"]]
            case_rows.append({"case": case["case"], "volume": n, "lesions": len(good),
                              "cnr_median": float(np.median(good)) if good else float("nan")})
    per_case = {n: [r["cnr_median"] for r in case_rows if r["volume"] == n] for n in names}
    pooled = {n: median_iqr([r["cnr"] for r in lesion_rows if r["volume"] == n and not r["error"]]) for n in names}
    across = {n: median_iqr(per_case[n]) for n in names}
    tests = [{"a": a, "b": b, "unit": "case (median CNR of its lesions)", **paired_comparison(per_case[a], per_case[b])}
             for a, b in combinations(names, 2)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_dir / "cnr_per_lesion.csv", lesion_rows)
    atomic_write_csv(out_dir / "cnr_per_case.csv", case_rows, ["case", "volume", "lesions", "cnr_median"])
    record = {"cases": len(cases), "lesions": {n: pooled[n]["n"] for n in names}, "pooled_by_lesion": pooled,
              "across_cases": across, "tests_across_cases": tests}
    atomic_write_text(out_dir / "cnr.json", json.dumps(record, indent=2, default=float) + "\n")
    text = _markdown(record, names)
    atomic_write_text(out_dir / "cnr_study.md", text)
    _figure(lesion_rows, per_case, names, out_dir / "cnr_study.png", len(cases))
    return text


def _markdown(record: dict, names: list[str]) -> str:
    n = record["cases"]
    lines = [f"# Lymph-node CNR over {n} case(s)", "",
             "CNR as the paper defines it: |mean DTA - mean lesion| / noise, noise = sqrt((SD_right_fat^2 + "
             "SD_left_fat^2) / 2), circles of 90 % of each node's short axis.", "",
             "| volume | lesions | CNR by lesion, median (IQR) | cases | CNR by case, median (IQR) |", "|---|---|---|---|---|"]
    for v in names:
        p, c = record["pooled_by_lesion"][v], record["across_cases"][v]
        lines.append(f"| {v} | {p['n']} | {p['median']:.2f} ({p['q1']:.2f}-{p['q3']:.2f}) | {c['n']} | "
                     f"{c['median']:.2f} ({c['q1']:.2f}-{c['q3']:.2f}) |")
    lines += ["", "Paired tests across cases (each case's median CNR; a patient's nodes are not independent):", "",
              "| comparison | test | P | n |", "|---|---|---|---|"]
    for t in record["tests_across_cases"]:
        lines.append(f"| {t['a']} vs {t['b']} | {t['test'] or t.get('note', 'no test')} | {t['p']:.4g} | {t['n']} |")
    if n < FEW_CASES:
        lines += ["", f"**Caution:** only {n} case(s): these P values describe these cases and say little about others."]
    return "\n".join(lines) + "\n"


def _figure(lesion_rows, per_case, names, path, n_cases):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 4))
    values = [[r["cnr"] for r in lesion_rows if r["volume"] == v and not r["error"]] for v in names]
    ax.boxplot(values, tick_labels=names)
    for k in range(len(per_case[names[0]])):  # each case's median, joined across volumes
        ax.plot(range(1, len(names) + 1), [per_case[v][k] for v in names], color="0.6", lw=0.7, marker=".", zorder=0)
    ax.set_ylabel("lymph-node CNR")
    ax.set_title(f"CNR by lesion (boxes) and by case (lines); {n_cases} case(s), up to {max(len(v) for v in values)} "
                 "lesions per volume", fontsize=8)
    save_figure(fig, path, svg=True)
