"""Simulated readers for pipeline checks and demos only: marks whose detection rises with each lesion's CNR,
flagged 'simulated' so that no analysis can pass them off as radiologists' reading."""

from __future__ import annotations

import math

import numpy as np

from .analysis import truth_lesions
from .package import read_key, readers_folder
from .sessions import ReadingSession


def simulate_readers(study_dir, seed: int = 0, skill: dict | None = None) -> None:
    """Fill every session with marks from simulated readers whose detection rises with lesion CNR.

    A lesion's visibility in a condition is its best CNR among the volumes that condition shows; the
    chance of detecting it is a logistic function of that CNR, its rating grows with it, and each case
    gets a few false-positive marks. Marks are flagged ``simulated`` and the analysis says so.
    """
    from ..io.reading import read_volume
    from ..measurement.cnr import measure_cnr
    from ..measurement.rois import read_rois

    study, plan = read_key(study_dir)
    skill = skill or {}
    cnr = {}
    for case in study["cases"]:
        lesions = read_rois(case["truth"])
        roles = {r for s in plan["sessions"] for r in s["shows"]}
        rows = measure_cnr({role: read_volume(case[role], check_hu=False) for role in roles}, lesions)
        for row in rows:
            cnr[(case["id"], row["lesion"], row["volume"])] = 0.0 if math.isnan(row["cnr"]) else row["cnr"]
    truth = truth_lesions(study)
    for s in plan["sessions"]:
        rng = np.random.default_rng([seed, study["readers"].index(s["reader"]), s["session"]])
        threshold = skill.get(s["reader"], 3.0)
        session = ReadingSession(readers_folder(study_dir), s["reader"], s["session"])
        code = session.current_code()
        while code is not None:
            case_id = s["key"][code]
            for les in truth[case_id]:
                visibility = max(cnr[(case_id, les.lesion_id, role)] for role in s["shows"])
                if rng.random() < 1 / (1 + math.exp(-(visibility - threshold))):
                    rating = int(np.clip(1 + visibility // 3 + rng.integers(-1, 2), 1, 4))
                    jitter = rng.normal(0, les.radius_mm / 4, 3)
                    session.add_mark(code, les.center + jitter, rating, simulated=True)
            for _ in range(rng.poisson(0.4)):
                centre = truth[case_id][0].center if truth[case_id] else np.zeros(3)
                session.add_mark(code, centre + rng.normal(0, 40, 3) * [1, 1, 0], int(rng.integers(1, 3)), simulated=True)
            code = session.complete_case(code)
