"""How many readers and cases a study needs: the power of the OR test of two modalities for J readers and K cases,
from a pilot's OR variance components (Hillis, Obuchowski & Berbaum, Acad Radiol 2011, eq. 10; as RJafroc's
SsPowerGivenJK and SsSampleSizeKGivenJ with method "OR"), for random readers and cases, fixed readers or fixed cases;
and the same for non-inferiority with a margin (the one-sided test of readerstudy/significance.margin_tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from .ratings import Ratings

ANALYSES = ("RRRC", "FRRC", "RRFC")
#: As RJafroc's search: no study is sized beyond this many cases.
MAX_CASES = 2000


@dataclass
class Components:
    """A pilot's OR variance components of the difference of two modalities, and its number of cases K*."""

    var_tr: float
    cov1: float
    cov2: float
    cov3: float
    var: float
    pilot_cases: int

    @classmethod
    def from_mapping(cls, values: dict, where: str = "the components") -> "Components":
        names = {"VarTR": "var_tr", "Cov1": "cov1", "Cov2": "cov2", "Cov3": "cov3", "Var": "var", "KStar": "pilot_cases"}
        missing = [k for k in names if k not in values]
        if missing:
            raise ValueError(f"{where} lack {', '.join(missing)} (give VarTR, Cov1, Cov2, Cov3, Var and KStar)")
        return cls(**{field: float(values[key]) for key, field in names.items()})


def pilot(ratings: Ratings, fom: str, pair: tuple[str, str]) -> tuple[Components, float]:
    """The components of the pilot restricted to two of its modalities, and their observed difference of FOMs."""
    from .significance import analyze_or

    index = [ratings.modality_ids.index(m) for m in pair]
    two = Ratings(ratings.nl[index], ratings.ll[index], ratings.lesions_per_case, ratings.weights, list(pair),
                  ratings.reader_ids, ratings.case_ids, ratings.paradigm)
    result = analyze_or(two, fom)
    v = result["variance_components"]
    k_star = result["cases"]["non_diseased"] + result["cases"]["diseased"]
    components = Components(v["VarTR"], v["Cov1"], v["Cov2"], v["Cov3"], v["Var"], k_star)
    return components, float(result["modality_means"][0] - result["modality_means"][1])


def _terms(c: Components, readers: int, cases: int) -> tuple[float, float, float]:
    """VarTR (negative taken as 0, as RJafroc does), and the case terms of eq. 10 scaled from K* to K cases."""
    scale, between = c.pilot_cases / cases, max(c.cov2 - c.cov3, 0.0)
    return (max(c.var_tr, 0.0), scale * (c.var - c.cov1 + (readers - 1) * between), scale * (c.var - c.cov1 - between))


def power(c: Components, readers: int, cases: int, effect: float, alpha: float = 0.05, analysis: str = "RRRC",
          margin: float | None = None) -> dict:
    """The power, the noncentrality and the degrees of freedom of the test of a true difference ``effect``: the
    two-sided F (chi-square for fixed readers) of a difference, or with a margin the one-sided non-inferiority test
    at alpha / 2 whose statistic is shifted by the margin."""
    if analysis not in ANALYSES:
        raise ValueError(f"unknown analysis {analysis!r}; one of {', '.join(ANALYSES)}")
    var_tr, spread, within = _terms(c, readers, cases)
    if analysis == "RRRC":
        den = var_tr + spread
        df = den ** 2 / ((var_tr + within) ** 2 / (readers - 1))
    elif analysis == "FRRC":
        den, df = spread, math.inf
    else:
        den, df = var_tr + within, float(readers - 1)
    shift = effect if margin is None else effect + margin
    ncp = shift ** 2 * readers / 2 / den
    if margin is None:
        if math.isinf(df):
            critical = float(stats.chi2.ppf(1 - alpha, 1))
            achieved = float(stats.ncx2.sf(critical, 1, ncp))
        else:
            critical = float(stats.f.ppf(1 - alpha, 1, df))
            achieved = float(stats.ncf.sf(critical, 1, df, ncp))
    else:  # one-sided, at alpha / 2, as the report's non-inferiority test
        root = math.copysign(math.sqrt(ncp), shift)
        if math.isinf(df):
            critical = float(stats.norm.ppf(1 - alpha / 2))
            achieved = float(stats.norm.sf(critical - root))
        else:
            critical = float(stats.t.ppf(1 - alpha / 2, df))
            achieved = float(stats.nct.sf(critical, df, root))
    return {"analysis": analysis, "readers": readers, "cases": cases, "power": achieved, "ncp": float(ncp),
            "df": None if math.isinf(df) else float(df), "critical": critical}


def cases_for_power(c: Components, readers: int, effect: float, desired: float = 0.8, alpha: float = 0.05,
                    analysis: str = "RRRC", margin: float | None = None) -> dict:
    """The fewest cases (from 2 up to MAX_CASES) whose power reaches ``desired`` with ``readers`` readers; the
    figures of that size, with ``reached`` False where even MAX_CASES fall short (more readers are needed)."""
    for cases in range(2, MAX_CASES + 1):
        found = power(c, readers, cases, effect, alpha, analysis, margin)
        if found["power"] >= desired:
            return {**found, "reached": True}
    return {**found, "reached": False}


def sizing_table(c: Components, readers_list, effect: float, desired: float = 0.8, alpha: float = 0.05,
                 margin: float | None = None) -> list[dict]:
    """For each number of readers and each analysis: the cases needed and the power they give."""
    return [cases_for_power(c, j, effect, desired, alpha, analysis, margin) for j in readers_list for analysis in ANALYSES]


def sizing_markdown(rows: list[dict], effect: float, desired: float, alpha: float, margin: float | None,
                    source: str) -> str:
    what = (f"non-inferiority with margin {margin:g} (one-sided at {alpha / 2:g}), true difference {effect:g}"
            if margin is not None else f"a difference of {effect:g} (two-sided, alpha {alpha:g})")
    lines = [f"# Readers and cases for {desired:.0%} power", "",
             f"Test: {what}. Variance components: {source}. Method: Hillis, Obuchowski & Berbaum 2011 (eq. 10), as "
             "RJafroc's SsSampleSizeKGivenJ (method \"OR\"); a pilot's components are themselves estimates, so these "
             "sizes are too.", "",
             "| readers | analysis | cases | power | df |", "|---|---|---|---|---|"]
    for r in rows:
        cases = f"{r['cases']}" if r["reached"] else f"more than {MAX_CASES}"
        df = "inf" if r["df"] is None else f"{r['df']:.2f}"
        lines.append(f"| {r['readers']} | {r['analysis']} | {cases} | {r['power']:.4f} | {df} |")
    return "\n".join(lines) + "\n"


def parse_readers(text: str) -> list[int]:
    values = [int(v) for v in str(text).split(",") if v.strip()]
    if not values or any(v < 2 for v in values):
        raise ValueError(f"readers must be whole numbers of at least 2, such as 4,6,8; got {text!r}")
    return values



def choose_pair(modalities: list[str], asked) -> tuple[str, str]:
    """The two modalities to size for: those asked, else the study's own question, else a pilot's only two."""
    if asked:
        unknown = [m for m in asked if m not in modalities]
        if unknown:
            raise ValueError(f"the pilot has no modality {unknown[0]!r}; it has {', '.join(modalities)}")
        return tuple(asked)
    if "NCCT+sCECT" in modalities and "CECT" in modalities:
        return "NCCT+sCECT", "CECT"  # the study's own question
    if len(modalities) == 2:
        return tuple(modalities)
    raise ValueError(f"the pilot has {len(modalities)} modalities ({', '.join(modalities)}); choose two with --modalities")

