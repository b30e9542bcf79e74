"""The significance analysis written out: significance.json (everything, pseudovalues included), a short report
that names the method and its references, and each modality's empirical operating characteristics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_text
from .foms import scored
from .ratings import Ratings
from .significance import analyze_or


def write_significance(ratings: Ratings, fom: str, why: str, out_dir: Path, simulated: bool = False,
                       margin: float | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = analyze_or(ratings, fom, margin=margin)
    result["fom_choice"] = why
    result["simulated_marks"] = simulated
    result["cautions"] = cautions(result)
    atomic_write_text(out_dir / "significance.json", json.dumps(result, indent=1, default=float) + "\n")
    atomic_write_text(out_dir / "significance.md", significance_markdown(result))
    operating_characteristics(ratings, fom, out_dir / "operating_characteristics.png", simulated)
    return result


#: Below these, the OR-Hillis P values and CIs rest on very few degrees of freedom (Hillis 2008 gives its ddf for
#: studies of this size; RJafroc's sample-size examples start at 4 readers); a study that small is a pilot.
FEW_READERS, FEW_CASES, FEW_DDF = 4, 20, 5.0


def cautions(r: dict) -> list[str]:
    """What a reader of the report must weigh before trusting its P values and CIs."""
    out = []
    readers, cases = len(r["readers"]), r["cases"]["non_diseased"] + r["cases"]["diseased"]
    ddf = r["RRRC"]["ddf"]
    if readers < FEW_READERS:
        out.append(f"only {readers} reader(s) (fewer than {FEW_READERS}): the random-reader result rests on very few readers")
    if cases < FEW_CASES:
        out.append(f"only {cases} case(s) (fewer than {FEW_CASES})")
    if not ddf >= FEW_DDF:
        out.append(f"Hillis' denominator degrees of freedom are {ddf:.2f} (under {FEW_DDF:g}): the F test and the CIs are very wide")
    for m in r["RRRC"]["modalities"]:
        lo, hi = m["ci"]
        if lo < 0 or hi > 1:
            out.append(f"the 95% CI of {m['modality']} ({lo:.3f} to {hi:.3f}) leaves [0, 1], where a figure of merit lies: "
                       "it is reported as computed, and says how little the data constrain it")
    if out:
        out.append("treat this as a pilot: its variance components (significance.json) are what RJafroc's or the Iowa "
                   "program's sample-size functions take to size the study that can answer the question")
    return out


def significance_markdown(r: dict) -> str:
    lines = ["# Is the difference significant?", ""]
    if r.get("simulated_marks"):
        lines += ["**These ratings come from SIMULATED readers (pipeline check), not from radiologists.**", ""]
    if r.get("cautions"):
        lines += ["**Caution: a small study.**", ""] + [f"- {c}" for c in r["cautions"]] + [""]
    lines += [
        f"Figure of merit: **{r['fom']}** ({r['fom_choice']}). {len(r['readers'])} readers, {r['cases']['non_diseased']} non-diseased "
        f"and {r['cases']['diseased']} diseased cases.", "",
        "Method: Obuchowski-Rockette analysis with jackknife covariances and Hillis' corrections (Obuchowski & Rockette "
        "1995; Hillis 2007; Hillis, Obuchowski & Berbaum 2008), as in RJafroc's St(method = \"OR\") and the Iowa "
        "OR-DBM MRMC program (Chakraborty, *Observer Performance Methods for Diagnostic Imaging*, 2017, ch. 10).", "",
        "| modality | FOM (reader mean) | 95% CI, random readers and cases | 95% CI, fixed readers |", "|---|---|---|---|"]
    for rr, fr in zip(r["RRRC"]["modalities"], r["FRRC"]["modalities"]):
        lines.append(f"| {rr['modality']} | {rr['estimate']:.4f} | {rr['ci'][0]:.4f} to {rr['ci'][1]:.4f} | {fr['ci'][0]:.4f} to {fr['ci'][1]:.4f} |")
    rrrc, frrc, rrfc = r["RRRC"], r["FRRC"], r["RRFC"]
    lines += ["", "| analysis | test | P |", "|---|---|---|",
              f"| random readers, random cases (RRRC) | F({rrrc['ndf']}, {rrrc['ddf']:.2f}) = {rrrc['F']:.4f} | {rrrc['p']:.4g} |",
              f"| fixed readers, random cases (FRRC) | chi-square({frrc['df']}) = {frrc['chi2']:.4f} | {frrc['p']:.4g} |",
              f"| random readers, fixed cases (RRFC) | F({rrfc['ndf']}, {rrfc['ddf']}) = {rrfc['F']:.4f} | {rrfc['p']:.4g} |",
              "", "| difference | estimate | 95% CI (RRRC) | P (RRRC) |", "|---|---|---|---|"]
    for d in rrrc["differences"]:
        lines.append(f"| {d['comparison']} | {d['estimate']:.4f} | {d['ci'][0]:.4f} to {d['ci'][1]:.4f} | {d['p']:.4g} |")
    if r.get("margin"):
        lines += margin_markdown(r["margin"], r["alpha"])
    v = r["variance_components"]
    lines += ["", "Variance components (VarTR and VarR as RJafroc computes them, with max(Cov2 - Cov3, 0); the Iowa program's "
              "values are in significance.json): " + ", ".join(f"{k} {v[k]:.6g}" for k in ("VarR", "VarTR", "Var", "Cov1", "Cov2", "Cov3")),
              "", "The random-reader random-case result is the one that generalises to other readers and cases.", ""]
    return "\n".join(lines)


def margin_markdown(m: dict, alpha: float) -> list[str]:
    """The non-inferiority and equivalence tests of the random-reader random-case analysis, each null hypothesis in
    words; the other two analyses are in significance.json."""
    lines = ["", f"## Non-inferiority and equivalence, margin {m['value']:g} (random readers and cases)", "",
             f"Each null hypothesis below is tested one-sided at {m['level']:g}, so each conclusion agrees with the "
             f"{100 * (1 - alpha):g}% CI of the difference above: non-inferiority where the CI lies above -{m['value']:g}, "
             f"equivalence where it lies within +-{m['value']:g}.", "",
             "| null hypothesis | P | conclusion |", "|---|---|---|"]
    verdicts = (("a_not_inferior_to_b", "{a} is non-inferior to {b}"), ("b_not_inferior_to_a", "{b} is non-inferior to {a}"),
                ("equivalent", "{a} and {b} are equivalent"))
    for t in m["RRRC"]:
        for key, claim in verdicts:
            test = t[key]
            said = claim.format(a=t["a"], b=t["b"])
            lines.append(f"| {test['null']} | {test['p']:.4g} | {'rejected: ' + said if test['rejected'] else 'not rejected'} |")
    return lines


def _curve(name: str, nl: np.ndarray, ll: np.ndarray, weights: np.ndarray, lesions_per_case: np.ndarray, k1: int):
    """Empirical operating points from the strictest to the laxest rating: (FPF, LLF or TPF), from the same
    negatives, positives and shares as the figure of merit."""
    negatives, positives, shares = scored(name, nl, ll, weights, lesions_per_case, k1)
    thresholds = sorted({v for v in np.concatenate([negatives, positives]) if np.isfinite(v)}, reverse=True)
    x, y = [0.0], [0.0]
    for t in thresholds:
        x.append(float((negatives >= t).mean()))
        y.append(float(shares[positives >= t].sum()))
    return x, y


def operating_characteristics(ratings: Ratings, fom: str, path: Path, simulated: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..measurement.figures import save_figure

    i_count, j_count, k1, _ = ratings.shape
    fig, axes = plt.subplots(1, i_count, figsize=(4.2 * i_count, 4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for j in range(j_count):
            x, y = _curve(fom, ratings.nl[i, j], ratings.ll[i, j], ratings.weights, ratings.lesions_per_case, k1)
            ax.plot(x, y, marker=".", label=f"reader {ratings.reader_ids[j]}")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("FPF")
        ax.set_ylabel("TPF" if fom == "ROC" else ("weighted LLF" if fom.startswith("w") else "LLF"))
        ax.set_title(f"{ratings.modality_ids[i]}: empirical {fom}")
        ax.legend(fontsize=7)
    return save_figure(fig, path, simulated=simulated)
