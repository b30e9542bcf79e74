"""A reader study's ratings in RJafroc's layout: non-lesion marks NL[modality, reader, case, mark] over all cases
(non-diseased first) and lesion marks LL[modality, reader, diseased case, lesion], -inf where nothing was marked,
with the lesion weights. Every figure of merit and the significance tests read this one structure."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


@dataclass
class Ratings:
    nl: np.ndarray  # (I, J, K, max NL marks)
    ll: np.ndarray  # (I, J, K2, max lesions)
    lesions_per_case: np.ndarray  # (K2,)
    weights: np.ndarray  # (K2, max lesions); each diseased case's weights sum to 1
    modality_ids: list[str]
    reader_ids: list[str]
    case_ids: list[str] = field(default_factory=list)  # K, non-diseased first
    paradigm: str = "FROC"  # or ROC: one rating per case, NL for non-diseased, LL for diseased

    def __post_init__(self):
        self.nl = np.asarray(self.nl, float)
        self.ll = np.asarray(self.ll, float)
        self.lesions_per_case = np.asarray(self.lesions_per_case, int)
        self.weights = np.asarray(self.weights, float)
        i, j, k, _ = self.nl.shape
        if self.ll.shape[:3] != (i, j, self.ll.shape[2]) or self.ll.shape[2] > k:
            raise InputError(None, f"NL {self.nl.shape} and LL {self.ll.shape} do not describe one study")
        if len(self.modality_ids) != i or len(self.reader_ids) != j:
            raise InputError(None, f"{i} modalities and {j} readers in the ratings, {len(self.modality_ids)} and {len(self.reader_ids)} named")
        self.weights = equal_weights_where_missing(self.weights, self.lesions_per_case)
        if not self.case_ids:
            self.case_ids = [str(n) for n in range(k)]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(modalities I, readers J, non-diseased cases K1, diseased cases K2)."""
        i, j, k, _ = self.nl.shape
        k2 = self.ll.shape[2]
        return i, j, k - k2, k2

    def to_json(self) -> dict:
        """Plain JSON (null for -inf, which JSON cannot hold), as an imported study's ratings.json keeps it."""

        def plain(array):
            return np.where(np.isfinite(array), array.astype(object), None).tolist()

        return {"format": "synthetic-contrast-ratings/1", "type": self.paradigm, "modality_ids": self.modality_ids,
                "reader_ids": self.reader_ids, "case_ids": self.case_ids, "nl": plain(self.nl), "ll": plain(self.ll),
                "lesions_per_case": self.lesions_per_case.tolist(), "weights": self.weights.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Ratings":
        """What ``to_json`` wrote, or RJafroc's arrays as tests/data/rjafroc stores them (null for -inf)."""

        def array(nested):
            return np.vectorize(lambda v: -np.inf if v is None else float(v), otypes=[float])(np.array(nested, dtype=object))

        return cls(array(data["nl"]), array(data["ll"]), data["lesions_per_case"], array(data["weights"]),
                   list(data["modality_ids"]), list(data["reader_ids"]), list(data.get("case_ids", [])), data.get("type", "FROC"))


def equal_weights_where_missing(weights: np.ndarray, lesions_per_case: np.ndarray) -> np.ndarray:
    """Lesion weights per diseased case: as given when they are positive and sum to 1, else equal (1/L)."""
    weights = np.where(np.isfinite(weights), weights, 0.0)
    out = np.zeros_like(weights)
    for k, n in enumerate(lesions_per_case):
        given = weights[k, :n]
        if n and np.all(given > 0) and abs(given.sum() - 1.0) < 1e-6:
            out[k, :n] = given
        elif n:
            out[k, :n] = 1.0 / n
    return out
