"""Blinded reader comparison: study plan, crash-safe reading sessions, and the paper's reader statistics.

Readers see cases under opaque per-session codes in an independent random order per reader and session.
Every mark is written atomically as it is made. The analysis matches marks to ground-truth lesions and
reports detection rate (McNemar), conspicuity with missed = 0 (Wilcoxon signed-rank) and the JAFROC
figures of merit AFROC1 and wAFROC1 as RJafroc defines them. The Obuchowski-Rockette-Hillis
random-reader random-case test is not implemented; the report says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_write_csv, atomic_write_text
from .measurement.rois import parse_rois

STUDY_FORMAT = "synthetic-contrast-reader-study/1"
PAPER_CONDITIONS = (
    {"id": "NCCT", "shows": ["ncct"]},
    {"id": "NCCT+sCECT", "shows": ["ncct", "scect"]},
    {"id": "CECT", "shows": ["cect"]},
)
RATINGS = (1, 2, 3, 4)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- study and plan -----------------------------------------------------------------------------

def load_study(path: str | Path) -> dict:
    """Read and check a study file; relative volume paths are resolved against its folder."""
    path = Path(path)
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not a readable study file: {exc}") from exc
    if study.get("format") != STUDY_FORMAT:
        raise InputError(path, f"format must be {STUDY_FORMAT!r}")
    study.setdefault("conditions", [dict(c) for c in PAPER_CONDITIONS])
    study.setdefault("washout_days", 14)
    study.setdefault("seed", 0)
    if not study.get("readers") or not study.get("cases"):
        raise InputError(path, "needs at least one reader and one case")
    ids = [c["id"] for c in study["cases"]]
    if len(set(ids)) != len(ids):
        raise InputError(path, "case ids repeat")
    base = path.parent
    for case in study["cases"]:
        for role in {r for c in study["conditions"] for r in c["shows"]} | ({"truth", "scect_sd"} & set(case)):
            if role not in case:
                raise InputError(path, f"case {case['id']} lacks the '{role}' volume its conditions show")
            case[role] = str((base / case[role]).resolve())
    return study


def _code(seed, reader, condition, case_id) -> str:
    """Opaque per-(reader, session) case code: the same case gets unrelated codes in other sessions."""
    digest = hashlib.sha256(f"{seed}|{reader}|{condition}|{case_id}".encode()).hexdigest()
    return f"C{digest[:6].upper()}"


def planned_model(study: dict, where) -> dict | None:
    """The model a study names (store name or card): its name, id and sha256, after checking that every synthetic
    volume of the study was made by it, so readers never read images of another model by mistake."""
    if not study.get("model"):
        return None
    from .engine.models import read_card

    card = read_card(study["model"])
    model = {"name": str(study["model"]), "model_id": card.model_id, "sha256": card.sha256}
    for case in study["cases"]:
        for role, path in case.items():
            if role != "id" and isinstance(path, str):
                problem = model_mismatch(path, model)
                if problem:
                    raise InputError(where, f"case {case['id']} ({role}): {problem}")
    return model


def model_mismatch(path, model: dict) -> str | None:
    """Why a volume's SYNTHETIC label names another model than ``model``, or None (also for acquired images)."""
    from .io.reading import synthetic_provenance

    if not Path(path).is_file():
        return None
    provenance = synthetic_provenance(path)
    if provenance is None:
        return None
    if provenance["sha256"]:
        same = provenance["sha256"] == model["sha256"]
    else:  # NIfTI: the label holds the model id and 12 hex of its sha256
        same = model["sha256"][:12] in provenance["label"]
    if same:
        return None
    return (f"{path} was made by another model ({provenance['model_id'] or provenance['label']}) than the study's "
            f"{model['name']} (sha256 {model['sha256'][:12]})")


def make_plan(study: dict) -> dict:
    """Independent, reproducible random case order per reader and session, with opaque case codes."""
    seed = int(study["seed"])
    sessions = []
    for r, reader in enumerate(study["readers"]):
        for s, condition in enumerate(study["conditions"]):
            rng = np.random.default_rng([seed, r, s])
            order = [study["cases"][i]["id"] for i in rng.permutation(len(study["cases"]))]
            codes = {cid: _code(seed, reader, condition["id"], cid) for cid in order}
            sessions.append({
                "reader": reader, "session": s + 1, "condition": condition["id"], "shows": condition["shows"],
                "order": [codes[c] for c in order], "key": {codes[c]: c for c in order},
            })
    return {"format": STUDY_FORMAT + "-plan", "seed": seed, "washout_days": study["washout_days"],
            "created": _now(), "sessions": sessions}


def write_plan(study_path: str | Path, out_dir: str | Path) -> dict:
    """Write study.json (resolved) and plan.json into ``out_dir``; an existing plan is never replaced."""
    out_dir = Path(out_dir)
    if (out_dir / "plan.json").exists():
        raise InputError(out_dir / "plan.json", "a plan exists already; plan a new study in a new folder")
    study = load_study(study_path)
    plan = make_plan(study)
    model = planned_model(study, study_path)
    if model:
        plan["model"] = model
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "study.json", json.dumps(study, indent=2) + "\n")
    atomic_write_text(out_dir / "plan.json", json.dumps(plan, indent=2) + "\n")
    return plan


def read_plan(study_dir: str | Path) -> tuple[dict, dict]:
    study_dir = Path(study_dir)
    for name in ("study.json", "plan.json"):
        if not (study_dir / name).exists():
            raise InputError(study_dir, f"has no {name}; run 'reader-study plan' first")
    return json.loads((study_dir / "study.json").read_text()), json.loads((study_dir / "plan.json").read_text())


# --- reading sessions ---------------------------------------------------------------------------

class ReadingSession:
    """One reader's session: the next case, marks with ratings, each change saved atomically at once."""

    def __init__(self, study_dir: str | Path, reader: str, session: int):
        self.study_dir = Path(study_dir)
        self.study, self.plan = read_plan(study_dir)
        match = [s for s in self.plan["sessions"] if s["reader"] == reader and s["session"] == session]
        if not match:
            raise InputError(self.study_dir, f"plan has no session {session} for reader {reader!r}")
        self.entry = match[0]
        self.dir = self.study_dir / "marks" / _safe(reader) / f"session{session}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "session.json"
        self._check_model()
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else self._start()

    def _check_model(self) -> None:
        """A session refuses to run when the model the study was planned with is no longer the one its name gives."""
        model = self.plan.get("model")
        if not model:
            return
        from .engine.models import read_card
        from .errors import ModelError

        try:
            current = read_card(model["name"]).sha256
        except ModelError as exc:
            raise InputError(self.study_dir, f"the study was planned with model {model['name']}, which is not available: {exc}") from exc
        if current != model["sha256"]:
            raise InputError(self.study_dir, f"the study was planned with model {model['name']} (sha256 {model['sha256'][:12]}), "
                             f"but {model['name']} is now sha256 {current[:12]}; a session refuses a different model. "
                             "Install the planned model, or plan a new study")

    def _start(self) -> dict:
        state = {"reader": self.entry["reader"], "session": self.entry["session"], "started": _now(), "finished": None}
        previous = self.study_dir / "marks" / _safe(self.entry["reader"]) / f"session{self.entry['session'] - 1}" / "session.json"
        if previous.exists():
            prev = json.loads(previous.read_text())
            ended = prev.get("finished") or prev.get("started")
            gap = (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(ended)).total_seconds() / 86400
            if gap < self.plan["washout_days"]:
                state["washout_warning"] = (f"only {gap:.1f} days since session {prev['session']}; "
                                            f"the study asks for {self.plan['washout_days']} days of washout")
        atomic_write_text(self.state_path, json.dumps(state, indent=2) + "\n")
        return state

    @property
    def condition(self) -> str:
        return self.entry["condition"]

    def _case_path(self, code: str) -> Path:
        if code not in self.entry["key"]:
            raise KeyError(f"{code} is not a case of this session")
        return self.dir / f"{code}.json"

    def case_record(self, code: str) -> dict:
        path = self._case_path(code)
        return json.loads(path.read_text()) if path.exists() else {"code": code, "marks": [], "complete": False, "next_id": 1}

    def _save(self, record: dict) -> None:
        record["saved"] = _now()
        atomic_write_text(self._case_path(record["code"]), json.dumps(record, indent=2) + "\n")

    def current_code(self) -> str | None:
        """The first case in this reader's order that is not complete (resume point), or None when done."""
        for code in self.entry["order"]:
            if not self.case_record(code).get("complete"):
                return code
        return None

    def progress(self) -> tuple[int, int]:
        done = sum(1 for c in self.entry["order"] if self.case_record(c).get("complete"))
        return done, len(self.entry["order"])

    def volumes(self, code: str) -> dict[str, str]:
        """Volume paths to load for this case and condition; callers show them only under neutral names."""
        case = next(c for c in self.study["cases"] if c["id"] == self.entry["key"][code])
        shown = {role: case[role] for role in self.entry["shows"]}
        model = self.plan.get("model")
        for path in shown.values() if model else ():
            problem = model_mismatch(path, model)  # a volume remade with another model after planning
            if problem:
                raise InputError(self.study_dir, f"case {code}: {problem}; a session refuses a different model")
        return shown

    def add_mark(self, code: str, point_lps, rating: int, simulated: bool = False) -> int:
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {RATINGS}, got {rating}")
        record = self.case_record(code)
        mark_id = record["next_id"]
        record["marks"].append({"id": mark_id, "point_lps": [float(v) for v in point_lps], "rating": int(rating),
                                "time": _now(), **({"simulated": True} if simulated else {})})
        record["next_id"] = mark_id + 1
        self._save(record)
        return mark_id

    def edit_mark(self, code: str, mark_id: int, rating: int | None = None, point_lps=None) -> None:
        record = self.case_record(code)
        mark = next((m for m in record["marks"] if m["id"] == mark_id), None)
        if mark is None:
            raise KeyError(f"case {code} has no mark {mark_id}")
        if rating is not None:
            if rating not in RATINGS:
                raise ValueError(f"rating must be one of {RATINGS}")
            mark["rating"] = int(rating)
        if point_lps is not None:
            mark["point_lps"] = [float(v) for v in point_lps]
        self._save(record)

    def delete_mark(self, code: str, mark_id: int) -> None:
        record = self.case_record(code)
        record["marks"] = [m for m in record["marks"] if m["id"] != mark_id]
        self._save(record)

    def complete_case(self, code: str) -> str | None:
        record = self.case_record(code)
        record["complete"] = True
        self._save(record)
        nxt = self.current_code()
        if nxt is None and not self.state.get("finished"):
            self.state["finished"] = _now()
            atomic_write_text(self.state_path, json.dumps(self.state, indent=2) + "\n")
        return nxt


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def study_status(study_dir) -> list[dict]:
    """Progress of every planned session; sessions not yet started are not created by looking."""
    _, plan = read_plan(study_dir)
    rows = []
    for s in plan["sessions"]:
        row = {"reader": s["reader"], "session": s["session"], "condition": s["condition"], "done": 0,
               "total": len(s["order"]), "washout_warning": ""}
        if (Path(study_dir) / "marks" / _safe(s["reader"]) / f"session{s['session']}" / "session.json").exists():
            session = ReadingSession(study_dir, s["reader"], s["session"])
            row["done"] = session.progress()[0]
            row["washout_warning"] = session.state.get("washout_warning", "")
        rows.append(row)
    return rows


# --- analysis -----------------------------------------------------------------------------------

@dataclass
class Lesion:
    case: str
    lesion_id: str
    center: np.ndarray
    radius_mm: float


def truth_lesions(study: dict) -> dict[str, list[Lesion]]:
    out = {}
    for case in study["cases"]:
        lesions = []
        if case.get("truth"):
            data = json.loads(Path(case["truth"]).read_text())
            for les in parse_rois(data, case["truth"]):
                lesions.append(Lesion(case["id"], les.lesion_id, les.center, les.extra["short_axis_mm"] / 2))
        out[case["id"]] = lesions
    return out


def lesion_uncertainty(study: dict, truth: dict[str, list[Lesion]]) -> dict[tuple[str, str], float]:
    """Mean SD (HU) of the sCECT's uncertainty map in each truth lesion's circle (0.9 x short axis, as for CNR),
    for cases whose study entry names the map as 'scect_sd'; readers' misses can then be set beside it."""
    from .measurement.cnr import circle_roi
    from .io.reading import read_volume

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


def _psi(fp: float, les: float) -> float:
    return 1.0 if les > fp else 0.5 if les == fp else 0.0


def fom_afroc1(nl_by_case: list[list[float]], ll_by_case: list[list[float]]) -> float:
    """AFROC1 (JAFROC1): highest NL rating of every case against every lesion rating; ties count 1/2."""
    fps = [max(nl, default=-math.inf) for nl in nl_by_case]
    lesions = [r for ll in ll_by_case for r in ll]
    if not lesions:
        return float("nan")
    return sum(_psi(fp, les) for fp in fps for les in lesions) / (len(fps) * len(lesions))


def fom_wafroc1(nl_by_case: list[list[float]], ll_by_case: list[list[float]], weights=None) -> float:
    """wAFROC1: like AFROC1, but each abnormal case counts once, its lesions weighted (equal by default)."""
    fps = [max(nl, default=-math.inf) for nl in nl_by_case]
    abnormal = [(k, ll) for k, ll in enumerate(ll_by_case) if ll]
    if not abnormal:
        return float("nan")
    total = 0.0
    for k, ll in abnormal:
        w = weights[k] if weights is not None else [1.0 / len(ll)] * len(ll)
        total += sum(wl * _psi(fp, les) for fp in fps for wl, les in zip(w, ll))
    return total / (len(fps) * len(abnormal))


def froc_points(nl_by_case, ll_by_case) -> list[tuple[float, float]]:
    """(NLF, LLF) at each rating threshold from strictest to laxest, starting at (0, 0)."""
    n_cases = len(nl_by_case)
    n_les = sum(len(ll) for ll in ll_by_case)
    points = [(0.0, 0.0)]
    for t in sorted(RATINGS, reverse=True):
        nlf = sum(1 for nl in nl_by_case for r in nl if r >= t) / max(n_cases, 1)
        llf = sum(1 for ll in ll_by_case for r in ll if r >= t) / max(n_les, 1)
        points.append((nlf, llf))
    return points


def collect(study_dir, tolerance_mm=None) -> dict:
    """Per reader and condition: lesion ratings and NL ratings per case (case order = study order)."""
    study, plan = read_plan(study_dir)
    truth = truth_lesions(study)
    data, simulated = {}, False
    for s in plan["sessions"]:
        session = ReadingSession(study_dir, s["reader"], s["session"])
        by_case = {}
        for code, case_id in s["key"].items():
            record = session.case_record(code)
            simulated |= any(m.get("simulated") for m in record["marks"])
            by_case[case_id] = match_marks(record["marks"], truth[case_id], tolerance_mm)
        data[(s["reader"], s["condition"])] = by_case
    return {"study": study, "plan": plan, "truth": truth, "data": data, "simulated": simulated}


def analyze(study_dir, out_dir, tolerance_mm: float | None = None) -> dict:
    """Reader statistics and reports: CSV, JSON, Markdown summary, conspicuity bars and FROC curves."""
    from scipy.stats import wilcoxon
    from statsmodels.stats.contingency_tables import mcnemar

    c = collect(study_dir, tolerance_mm)
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
            values.append(0 if r == -math.inf else int(r))
            rows.append({"reader": reader, "condition": cond, "case": cid, "lesion": lid, "conspicuity": values[-1],
                         "scect_sd_hu": sd_at.get((cid, lid), "")})
        rating[(reader, cond)] = np.array(values)
    summary = {"simulated_marks": c["simulated"], "lesions": len(lesion_keys), "cases": len(cases), "per_reader": [],
               "comparisons": [], "reader_averaged_fom": {},
               "orh_test": "not implemented: Obuchowski-Rockette-Hillis random-reader random-case analysis is left out"}
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
                "fom_afroc1": fom_afroc1(nl, ll), "fom_wafroc1": fom_wafroc1(nl, ll), "froc": froc_points(nl, ll),
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

    out_dir = Path(out_dir)
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
        "", f"Significance across readers and cases: {summary['orh_test']}.", ""]
    return "\n".join(lines)


def _plots(summary, rating, readers, conditions, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .measurement.figures import save_figure

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
    save_figure(fig, out_dir / "conspicuity_bars.png")
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
    save_figure(fig, out_dir / "froc_curves.png")


# --- simulated readers (pipeline checks and demos only) -----------------------------------------

def simulate_readers(study_dir, seed: int = 0, skill: dict | None = None) -> None:
    """Fill every session with marks from simulated readers whose detection rises with lesion CNR.

    A lesion's visibility in a condition is its best CNR among the volumes that condition shows; the
    chance of detecting it is a logistic function of that CNR, its rating grows with it, and each case
    gets a few false-positive marks. Marks are flagged ``simulated`` and the analysis says so.
    """
    from .measurement.cnr import measure_cnr
    from .measurement.rois import read_rois
    from .io.reading import read_volume

    study, plan = read_plan(study_dir)
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
        session = ReadingSession(study_dir, s["reader"], s["session"])
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
