"""Paired statistics as the paper reports them: median (IQR), and paired t or Wilcoxon chosen by Shapiro-Wilk."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

#: Below this many cases a paired test has little power and its P value describes those cases only: the reports of
#: evaluate and of a study's CNR say so.
FEW_CASES = 10


def median_iqr(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return {"n": 0, "median": float("nan"), "q1": float("nan"), "q3": float("nan")}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "median": float(med), "q1": float(q1), "q3": float(q3)}


def format_median_iqr(summary: dict, digits: int = 2) -> str:
    return f"{summary['median']:.{digits}f} ({summary['q1']:.{digits}f}-{summary['q3']:.{digits}f})"


def paired_comparison(a, b, alpha: float = 0.05) -> dict:
    """Shapiro-Wilk on the paired differences picks the paired t-test (normal) or Wilcoxon signed-rank."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = a - b
    result = {"n": int(a.size), "test": None, "statistic": float("nan"), "p": float("nan"), "shapiro_p": float("nan")}
    if a.size < 3:
        result["note"] = "fewer than 3 pairs: no test"
        return result
    if np.allclose(diff, diff[0]):
        result["note"] = "all paired differences equal: tests undefined"
        return result
    result["shapiro_p"] = float(_st.shapiro(diff).pvalue)
    if result["shapiro_p"] >= alpha:
        res = _st.ttest_rel(a, b)
        result.update(test="paired t-test", statistic=float(res.statistic), p=float(res.pvalue))
    else:
        res = _st.wilcoxon(a, b)
        result.update(test="Wilcoxon signed-rank", statistic=float(res.statistic), p=float(res.pvalue))
    return result


def format_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "P < .001" if p < 0.001 else f"P = {p:.3f}".replace("0.", ".", 1)
