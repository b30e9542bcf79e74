"""Figures of merit of a reader study, as RJafroc defines them (Chakraborty, *Observer Performance Methods for
Diagnostic Imaging*, CRC 2017, ch. 13-14): AFROC, wAFROC, AFROC1, wAFROC1, and ROC AUC from each case's highest
rating (trapezoid = Wilcoxon). A comparison counts 1 when the lesion (or abnormal case) rates higher, 1/2 on a tie,
-inf (unmarked) included; any real-valued rating scale works. Jackknife pseudovalues over cases feed the
Obuchowski-Rockette analysis."""

from __future__ import annotations

import numpy as np

from .ratings import Ratings

FOMS = ("wAFROC", "AFROC", "wAFROC1", "AFROC1", "ROC")


def _wins(negatives: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """For each positive rating: how many negatives it beats, ties counting 1/2 (vectorised Wilcoxon kernel)."""
    ordered = np.sort(negatives)
    below = np.searchsorted(ordered, positives, side="left")
    tied = np.searchsorted(ordered, positives, side="right") - below
    return below + 0.5 * tied


def scored(name: str, nl: np.ndarray, ll: np.ndarray, weights: np.ndarray, lesions_per_case: np.ndarray, k1: int,
           keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a figure of merit compares, for one reader in one modality: the negative ratings, the positive ratings,
    and each positive's share of the figure (the shares sum to 1). ``nl`` (K, marks) over all cases, non-diseased
    first; ``ll`` (K2, lesions); ``keep`` (K,) leaves cases out (the jackknife)."""
    if name not in FOMS:
        raise ValueError(f"unknown figure of merit {name!r}; one of {', '.join(FOMS)}")
    k = nl.shape[0]
    keep = np.ones(k, bool) if keep is None else keep
    highest_nl = nl.max(axis=1) if nl.shape[1] else np.full(k, -np.inf)
    normal, abnormal = keep[:k1], keep[k1:]
    if name == "ROC":  # each case's highest rating: non-diseased cases against diseased ones
        positives = np.maximum(highest_nl[k1:], ll.max(axis=1, initial=-np.inf))[abnormal]
        return highest_nl[:k1][normal], positives, np.full(len(positives), 1.0 / len(positives))
    # False positives: the highest NL mark of each non-diseased case (AFROC, wAFROC) or of every case (the '1' FOMs).
    fps = highest_nl[:k1][normal] if not name.endswith("1") else highest_nl[keep]
    present = np.arange(ll.shape[1])[None, :] < lesions_per_case[:, None]  # real lesions, not padding
    lesions = present & abnormal[:, None]
    if name.startswith("w"):  # every abnormal case counts once, its lesions by weight
        return fps, ll[lesions], weights[lesions] / abnormal.sum()
    return fps, ll[lesions], np.full(int(lesions.sum()), 1.0 / lesions.sum())


def fom(name: str, nl: np.ndarray, ll: np.ndarray, weights: np.ndarray, lesions_per_case: np.ndarray, k1: int,
        keep: np.ndarray | None = None) -> float:
    """One reader's figure of merit in one modality (arguments as for ``scored``)."""
    negatives, positives, shares = scored(name, nl, ll, weights, lesions_per_case, k1, keep)
    return float((shares * _wins(negatives, positives)).sum() / len(negatives))


def require_design(name: str, ratings: Ratings) -> None:
    """Refuse a figure of merit the study's cases cannot give, rather than computing NaN from an empty term."""
    if name not in FOMS:
        raise ValueError(f"unknown figure of merit {name!r}; one of {', '.join(FOMS)}")
    _, _, k1, k2 = ratings.shape
    if k1 == 0 and name in ("wAFROC", "AFROC", "ROC"):
        raise ValueError(f"{name} needs non-diseased cases and this study has none; use wAFROC1 or AFROC1")
    if k2 == 0:
        raise ValueError(f"{name} needs diseased cases and this study has none")


def fom_matrix(name: str, ratings: Ratings) -> np.ndarray:
    """The (modalities, readers) matrix of figures of merit."""
    require_design(name, ratings)
    i_count, j_count, k1, _ = ratings.shape
    return np.array([[fom(name, ratings.nl[i, j], ratings.ll[i, j], ratings.weights, ratings.lesions_per_case, k1)
                      for j in range(j_count)] for i in range(i_count)])


def jackknife(name: str, ratings: Ratings) -> np.ndarray:
    """(I, J, K) figures of merit with each case left out in turn."""
    i_count, j_count, k1, k2 = ratings.shape
    k = k1 + k2
    out = np.empty((i_count, j_count, k))
    keep = np.ones(k, bool)
    for case in range(k):
        keep[case] = False
        for i in range(i_count):
            for j in range(j_count):
                out[i, j, case] = fom(name, ratings.nl[i, j], ratings.ll[i, j], ratings.weights, ratings.lesions_per_case, k1, keep)
        keep[case] = True
    return out


def pseudovalues(name: str, ratings: Ratings) -> np.ndarray:
    """(I, J, K) jackknife pseudovalues K*theta - (K - 1)*theta_(k) (Dorfman-Berbaum-Metz; Hillis 2007)."""
    full = fom_matrix(name, ratings)
    left_out = jackknife(name, ratings)
    k = left_out.shape[2]
    return k * full[:, :, None] - (k - 1) * left_out


def fom_of_cases(name: str, nl_by_case: list[list[float]], ll_by_case: list[list[float]], weights=None) -> float:
    """One reader and modality from per-case lists: NL ratings, and lesion ratings (-inf unmarked; an empty list
    is a non-diseased case). ``weights`` per case as lists (equal by default). NaN when a term is missing."""
    normal = [k for k, ll in enumerate(ll_by_case) if not ll]
    abnormal = [k for k, ll in enumerate(ll_by_case) if ll]
    if not abnormal or (not normal and name in ("wAFROC", "AFROC", "ROC")):
        return float("nan")
    order = normal + abnormal
    max_nl = max([len(nl_by_case[k]) for k in order] + [1])
    max_ll = max(len(ll_by_case[k]) for k in abnormal)
    nl = np.full((len(order), max_nl), -np.inf)
    for row, k in enumerate(order):
        nl[row, :len(nl_by_case[k])] = nl_by_case[k]
    ll = np.full((len(abnormal), max_ll), -np.inf)
    w = np.zeros((len(abnormal), max_ll))
    for row, k in enumerate(abnormal):
        ll[row, :len(ll_by_case[k])] = ll_by_case[k]
        w[row, :len(ll_by_case[k])] = weights[k] if weights is not None else 1.0 / len(ll_by_case[k])
    return fom(name, nl, ll, w, np.array([len(ll_by_case[k]) for k in abnormal]), len(normal))
