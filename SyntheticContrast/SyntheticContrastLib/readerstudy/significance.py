"""Is the difference between modalities significant? The Obuchowski-Rockette analysis with Hillis' corrections,
from jackknife covariances of a figure of merit, for random readers and cases (RRRC), fixed readers (FRRC) and
fixed cases (RRFC), as RJafroc's St(method = "OR") and the Iowa OR-DBM MRMC program compute it. The two differ in
one place, VarTR (and VarR, which uses it) when Cov2 < Cov3: RJafroc takes max(Cov2 - Cov3, 0) there (Hillis 2011,
eq. 9), the Iowa program does not. VarTR and VarR here are RJafroc's; the Iowa values are kept beside them, under
their own name. F, ddf, P and the CIs are the same in both. With a margin, each pairwise difference is also tested
for non-inferiority and equivalence.

References: Obuchowski & Rockette, Commun Stat Simul Comput 1995; Hillis, Stat Med 2007 ("A comparison of
denominator degrees of freedom methods for multiple observer ROC analysis"); Hillis, Obuchowski & Berbaum,
Acad Radiol 2008 (the RRRC ddf used here); Chakraborty, *Observer Performance Methods*, CRC 2017, ch. 10.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import stats

from .foms import fom_matrix, pseudovalues
from .ratings import Ratings


def covariances(pv: np.ndarray) -> dict:
    """Var, Cov1 (same reader, other modality), Cov2 (same modality, other reader), Cov3 (both differ): averages
    of the jackknife covariance matrix of the (modality, reader) FOMs, which is the covariance of the
    pseudovalues over cases divided by K (Hillis 2007, eq. 4-5)."""
    i_count, j_count, k = pv.shape
    flat = pv.reshape(i_count * j_count, k)
    cov = np.cov(flat) / k
    modality = np.repeat(np.arange(i_count), j_count)
    reader = np.tile(np.arange(j_count), i_count)
    same_i, same_j = modality[:, None] == modality[None, :], reader[:, None] == reader[None, :]

    def mean(mask):
        return float(cov[mask].mean()) if mask.any() else float("nan")

    return {"Var": mean(same_i & same_j), "Cov1": mean(~same_i & same_j), "Cov2": mean(same_i & ~same_j),
            "Cov3": mean(~same_i & ~same_j), "matrix": cov}


def mean_squares(foms: np.ndarray) -> dict:
    """Treatment, reader and treatment-by-reader mean squares of the (I, J) FOM matrix."""
    i_count, j_count = foms.shape
    grand, by_i, by_j = foms.mean(), foms.mean(axis=1), foms.mean(axis=0)
    return {"msT": j_count * float(((by_i - grand) ** 2).sum()) / (i_count - 1),
            "msR": i_count * float(((by_j - grand) ** 2).sum()) / (j_count - 1) if j_count > 1 else float("nan"),
            "msTR": float(((foms - by_i[:, None] - by_j[None, :] + grand) ** 2).sum()) / ((i_count - 1) * (j_count - 1))
            if j_count > 1 else float("nan")}


def _div(a: float, b: float) -> float:
    """a / b as R computes it (inf or nan, never an exception): degenerate studies (readers that agree exactly)
    must still get a report, which then shows where the test is undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def _t_sf(stat: float, df: float) -> float:
    """Two-sided P of a t statistic; infinite df is the normal distribution."""
    return float(2 * (stats.norm.sf(abs(stat)) if not np.isfinite(df) else stats.t.sf(abs(stat), df)))


def _ci(estimate, stderr, quantile) -> list[float]:
    return [float(estimate - quantile * stderr), float(estimate + quantile * stderr)]


def _one_sided_p(stat: float, df) -> float:
    """P(T >= stat): the t distribution with the analysis' df, or the normal where df is None or infinite."""
    return float(stats.norm.sf(stat) if df is None or not np.isfinite(df) else stats.t.sf(stat, df))


def margin_tests(differences: list[dict], margin: float, alpha: float = 0.05) -> list[dict]:
    """Non-inferiority each way and equivalence (two one-sided tests) of each pairwise difference of FOMs, with the
    margin on the FOM's scale, from the difference's own estimate, standard error and df as the OR analysis gives
    them (Hillis' t with its ddf; the normal for fixed readers). Each one-sided test is at level alpha / 2, so that
    every conclusion agrees with the (1 - alpha) CI of the same difference: non-inferiority of a to b exactly when
    the CI lies above -margin, equivalence exactly when it lies within +-margin."""
    level, out = alpha / 2, []
    for d in differences:
        a, b, diff, stderr, df = d["a"], d["b"], d["estimate"], d["stderr"], d["df"]
        p_a = _one_sided_p(_div(diff + margin, stderr), df)  # against "a is worse than b by the margin or more"
        p_b = _one_sided_p(_div(margin - diff, stderr), df)  # against "b is worse than a by the margin or more"
        out.append({
            "a": a, "b": b, "margin": margin, "level": level, "estimate": diff, "stderr": stderr, "df": df,
            "a_not_inferior_to_b": {"null": f"{a} is worse than {b} by {margin:g} or more", "p": p_a, "rejected": p_a < level},
            "b_not_inferior_to_a": {"null": f"{b} is worse than {a} by {margin:g} or more", "p": p_b, "rejected": p_b < level},
            "equivalent": {"null": f"{a} and {b} differ by {margin:g} or more", "p": max(p_a, p_b),
                           "rejected": max(p_a, p_b) < level},
        })
    return out


def analyze_or(ratings: Ratings, fom_name: str = "wAFROC", alpha: float = 0.05, margin: float | None = None) -> dict:
    """All three analyses, the FOMs with their CIs, every pairwise difference, and the variance components; with a
    margin, the non-inferiority and equivalence tests of every difference in each analysis."""
    if margin is not None and not 0 < margin < 1:
        raise ValueError(f"the margin is a difference of figures of merit, between 0 and 1; got {margin}")
    foms = fom_matrix(fom_name, ratings)
    pv = pseudovalues(fom_name, ratings)
    i_count, j_count, k = pv.shape
    if i_count < 2:
        raise ValueError("a significance test between modalities needs at least two modalities")
    c = covariances(pv)
    ms = mean_squares(foms)
    var, cov1, cov2, cov3 = c["Var"], c["Cov1"], c["Cov2"], c["Cov3"]
    var_tr = ms["msTR"] - var + cov1 + max(cov2 - cov3, 0.0)  # RJafroc (Hillis 2011, eq. 9)
    var_tr_iowa = ms["msTR"] - var + cov1 + cov2 - cov3  # the Iowa OR-DBM MRMC program, unconstrained

    def reader_variance(tr):
        return (ms["msR"] - tr - var - (i_count - 1) * cov1 + cov2 + (i_count - 1) * cov3) / i_count

    var_r = reader_variance(var_tr)
    by_i = foms.mean(axis=1)
    pairs = list(combinations(range(i_count), 2))
    names = ratings.modality_ids

    # Per modality (the treatment's own readers and covariances) and per reader (its own modalities).
    cov = c["matrix"].reshape(i_count, j_count, i_count, j_count)
    off_reader = ~np.eye(j_count, dtype=bool)
    each_i = []
    for i in range(i_count):
        block = cov[i, :, i, :]
        each_i.append({"var": float(np.diag(block).mean()), "cov2": float(block[off_reader].mean()) if j_count > 1 else 0.0,
                       "msR": float(((foms[i] - by_i[i]) ** 2).sum() / (j_count - 1)) if j_count > 1 else float("nan")})
    each_j = []
    off_modality = ~np.eye(i_count, dtype=bool)
    for j in range(j_count):
        block = cov[:, j, :, j]
        each_j.append({"var": float(np.diag(block).mean()), "cov1": float(block[off_modality].mean())})

    def differences(stderr, quantile, df, p_of):
        out = []
        for a, b in pairs:
            diff = float(by_i[a] - by_i[b])
            stat = _div(diff, stderr)
            out.append({"comparison": f"{names[a]} - {names[b]}", "a": names[a], "b": names[b], "estimate": diff,
                        "stderr": float(stderr), "df": df,
                        "statistic": stat, "p": p_of(stat), "ci": _ci(diff, stderr, quantile)})
        return out

    # RRRC: Hillis (2008) error term and denominator degrees of freedom.
    error = ms["msTR"] + j_count * max(cov2 - cov3, 0.0)
    f_rrrc = _div(ms["msT"], error)
    ddf = _div(error ** 2, ms["msTR"] ** 2 / ((i_count - 1) * (j_count - 1)))
    t_rrrc = stats.t.ppf(1 - alpha / 2, ddf) if np.isfinite(ddf) else stats.norm.ppf(1 - alpha / 2)
    rrrc_each = []
    for i in range(i_count):
        e = each_i[i]["msR"] + j_count * max(each_i[i]["cov2"], 0.0)
        stderr, df = np.sqrt(e / j_count), _div(e ** 2, each_i[i]["msR"] ** 2 / (j_count - 1))
        quantile = stats.t.ppf(1 - alpha / 2, df) if np.isfinite(df) else stats.norm.ppf(1 - alpha / 2)
        rrrc_each.append({"modality": names[i], "estimate": float(by_i[i]), "stderr": float(stderr), "df": df,
                          "ci": _ci(by_i[i], stderr, quantile)})
    p_rrrc = stats.f.sf(f_rrrc, i_count - 1, ddf) if np.isfinite(ddf) else stats.chi2.sf(f_rrrc * (i_count - 1), i_count - 1)
    rrrc = {"F": f_rrrc, "ndf": i_count - 1, "ddf": ddf, "p": float(p_rrrc), "error_term": float(error),
            "differences": differences(np.sqrt(2.0 / j_count * error), t_rrrc, ddf, lambda s: _t_sf(s, ddf)),
            "modalities": rrrc_each}

    # FRRC: chi-square with I - 1 degrees of freedom (the F with infinite ddf).
    fixed_error = var - cov1 + (j_count - 1) * max(cov2 - cov3, 0.0)
    chi2 = _div((i_count - 1) * ms["msT"], fixed_error)
    z = stats.norm.ppf(1 - alpha / 2)
    frrc_each = []
    for i in range(i_count):
        stderr = np.sqrt((each_i[i]["var"] + (j_count - 1) * max(each_i[i]["cov2"], 0.0)) / j_count)
        frrc_each.append({"modality": names[i], "estimate": float(by_i[i]), "stderr": float(stderr), "ci": _ci(by_i[i], stderr, z)})
    per_reader = []
    for j in range(j_count):
        stderr = np.sqrt(2 * (each_j[j]["var"] - each_j[j]["cov1"]))
        for a, b in pairs:
            diff = float(foms[a, j] - foms[b, j])
            stat = _div(diff, stderr)
            per_reader.append({"reader": ratings.reader_ids[j], "comparison": f"{names[a]} - {names[b]}", "estimate": diff,
                               "stderr": float(stderr), "statistic": stat, "p": float(2 * stats.norm.sf(abs(stat))), "ci": _ci(diff, stderr, z)})
    frrc = {"chi2": float(chi2), "df": i_count - 1, "p": float(stats.chi2.sf(chi2, i_count - 1)), "error_term": float(fixed_error),
            "differences": differences(np.sqrt(2.0 / j_count * fixed_error), z, None, lambda s: float(2 * stats.norm.sf(abs(s)))),
            "modalities": frrc_each, "readers": per_reader}

    # RRFC: the conventional treatment x reader ANOVA of the FOMs.
    df_tr = (i_count - 1) * (j_count - 1)
    f_rrfc = _div(ms["msT"], ms["msTR"])
    t_rrfc = stats.t.ppf(1 - alpha / 2, df_tr)
    rrfc_each = []
    for i in range(i_count):
        stderr = np.sqrt(each_i[i]["msR"] / j_count)
        rrfc_each.append({"modality": names[i], "estimate": float(by_i[i]), "stderr": float(stderr), "df": j_count - 1,
                          "ci": _ci(by_i[i], stderr, stats.t.ppf(1 - alpha / 2, j_count - 1))})
    rrfc = {"F": float(f_rrfc), "ndf": i_count - 1, "ddf": df_tr, "p": float(stats.f.sf(f_rrfc, i_count - 1, df_tr)),
            "differences": differences(np.sqrt(2.0 / j_count * ms["msTR"]), t_rrfc, float(df_tr), lambda s: _t_sf(s, df_tr)),
            "modalities": rrfc_each}

    margins = {} if margin is None else {"margin": {
        "value": margin, "level": alpha / 2, **{name: margin_tests(analysis["differences"], margin, alpha)
                                                for name, analysis in (("RRRC", rrrc), ("FRRC", frrc), ("RRFC", rrfc))}}}
    return {
        "method": "Obuchowski-Rockette with Hillis' corrections (Hillis 2007, 2008), jackknife covariances",
        "fom": fom_name, "alpha": alpha, "modalities": names, "readers": ratings.reader_ids,
        "cases": {"non_diseased": int(ratings.shape[2]), "diseased": int(ratings.shape[3])},
        "foms": foms.tolist(), "modality_means": by_i.tolist(),
        "mean_squares": ms, "variance_components": {
            "VarR": float(var_r), "VarTR": float(var_tr), "Var": var, "Cov1": cov1, "Cov2": cov2, "Cov3": cov3,
            "as_in": "RJafroc: VarTR with max(Cov2 - Cov3, 0), Hillis 2011 eq. 9",
            "iowa_or_dbm_mrmc": {"VarR": float(reader_variance(var_tr_iowa)), "VarTR": float(var_tr_iowa)}},
        "per_modality": each_i, "per_reader": each_j, "pseudovalues": pv.tolist(),
        "RRRC": rrrc, "FRRC": frrc, "RRFC": rrfc, **margins,
    }
