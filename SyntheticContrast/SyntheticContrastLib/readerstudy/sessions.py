"""Blinded reading: the study file, its seeded plan (opaque per-session case codes, an independent random order per
reader and session, the model it was planned with), and crash-safe sessions that save every mark as it is made.
Where the plan is written, and what the readers get of it, is readerstudy/package.py."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import secrets
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write_text

STUDY_FORMAT = "synthetic-contrast-reader-study/1"
PAPER_CONDITIONS = (
    {"id": "NCCT", "shows": ["ncct"]},
    {"id": "NCCT+sCECT", "shows": ["ncct", "scect"]},
    {"id": "CECT", "shows": ["cect"]},
)
#: The paper's confidence scale; a study may declare its own ("rating_scale": [0, 100]): higher means more confident.
PAPER_RATING_SCALE = (1, 4)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- study and plan -----------------------------------------------------------------------------

def load_study(path: str | Path) -> dict:
    """Read and check a study file; relative volume paths are resolved against its folder."""
    path = Path(path)
    from ..fileio import read_json_object

    study = read_json_object(path, "a study file")
    if study.get("format") != STUDY_FORMAT:
        raise InputError(path, f"format must be {STUDY_FORMAT!r}")
    study.setdefault("conditions", [dict(c) for c in PAPER_CONDITIONS])
    study.setdefault("washout_days", 14)
    study.setdefault("seed", 0)
    scale = study.setdefault("rating_scale", list(PAPER_RATING_SCALE))
    if len(scale) != 2 or not all(isinstance(v, (int, float)) for v in scale) or not scale[0] < scale[1]:
        raise InputError(path, f"rating_scale must be [lowest, highest] with lowest < highest, got {scale!r}")
    if not study.get("readers") or not study.get("cases"):
        raise InputError(path, "needs at least one reader and one case")
    if not isinstance(study["readers"], list) or not isinstance(study["cases"], list) or \
            not all(isinstance(c, dict) and "id" in c for c in study["cases"]):
        raise InputError(path, "'readers' must be a list and 'cases' a list of objects, each with an 'id'")
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


def _code(secret, seed, reader, condition, case_id) -> str:
    """Opaque per-(reader, session) case code: the same case gets unrelated codes in other sessions. The plan's
    secret is in it because seeds, reader ids and case ids are easy to guess: without it, codes could be recomputed."""
    digest = hashlib.sha256(f"{secret}|{seed}|{reader}|{condition}|{case_id}".encode()).hexdigest()
    return f"C{digest[:6].upper()}"


def planned_model(study: dict, where) -> dict | None:
    """The model a study names (store name or card): its name, id and sha256, after checking that every synthetic
    volume of the study was made by it, so readers never read images of another model by mistake."""
    if not study.get("model"):
        return None
    from ..engine.models import read_card

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
    from ..io.reading import synthetic_provenance

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


def make_plan(study: dict, secret: str | None = None) -> dict:
    """Independent, reproducible random case order per reader and session (the seed), with opaque case codes (the
    secret, new for each plan unless given)."""
    seed, secret = int(study["seed"]), secret or secrets.token_hex(16)
    sessions = []
    for r, reader in enumerate(study["readers"]):
        for s, condition in enumerate(study["conditions"]):
            rng = np.random.default_rng([seed, r, s])
            order = [study["cases"][i]["id"] for i in rng.permutation(len(study["cases"]))]
            codes = {cid: _code(secret, seed, reader, condition["id"], cid) for cid in order}
            sessions.append({
                "reader": reader, "session": s + 1, "condition": condition["id"], "shows": condition["shows"],
                "order": [codes[c] for c in order], "key": {codes[c]: c for c in order},
            })
    return {"format": STUDY_FORMAT + "-plan", "seed": seed, "code_secret": secret, "washout_days": study["washout_days"],
            "created": _now(), "sessions": sessions}


# --- reading sessions ---------------------------------------------------------------------------

class ReadingSession:
    """One reader's session, from the readers' package alone: the next case, marks with ratings, each change saved
    atomically at once."""

    def __init__(self, folder: str | Path, reader: str, session: int):
        from .package import read_package, readers_folder

        self.readers_dir = readers_folder(folder)
        self.package = read_package(self.readers_dir)
        match = [s for s in self.package["sessions"] if s["reader"] == reader and s["session"] == session]
        if not match:
            raise InputError(self.readers_dir, f"plan has no session {session} for reader {reader!r}")
        self.entry = match[0]
        self.dir = self.readers_dir / "marks" / _safe(reader) / f"session{session}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "session.json"
        self._check_model()
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else self._start()

    def _check_model(self) -> None:
        """A session refuses to run when the model the study was planned with is no longer the one its name gives."""
        model = self.package.get("model")
        if not model:
            return
        from ..engine.models import read_card
        from ..errors import ModelError

        try:
            current = read_card(model["name"]).sha256
        except ModelError as exc:
            raise InputError(self.readers_dir, f"the study was planned with model {model['name']}, which is not available: {exc}") from exc
        if current != model["sha256"]:
            raise InputError(self.readers_dir, f"the study was planned with model {model['name']} (sha256 {model['sha256'][:12]}), "
                             f"but {model['name']} is now sha256 {current[:12]}; a session refuses a different model. "
                             "Install the planned model, or plan a new study")

    def _start(self) -> dict:
        state = {"reader": self.entry["reader"], "session": self.entry["session"], "started": _now(), "finished": None}
        previous = self.readers_dir / "marks" / _safe(self.entry["reader"]) / f"session{self.entry['session'] - 1}" / "session.json"
        if previous.exists():
            prev = json.loads(previous.read_text())
            ended = prev.get("finished") or prev.get("started")
            gap = (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(ended)).total_seconds() / 86400
            if gap < self.package["washout_days"]:
                state["washout_warning"] = (f"only {gap:.1f} days since session {prev['session']}; "
                                            f"the study asks for {self.package['washout_days']} days of washout")
        atomic_write_text(self.state_path, json.dumps(state, indent=2) + "\n")
        return state

    @property
    def shows(self) -> list[str]:
        """The roles this session shows (such as ncct and scect): what the reader sees anyway, not a condition id."""
        return list(self.entry["shows"])

    @property
    def rating_scale(self) -> tuple[float, float]:
        lo, hi = self.package.get("rating_scale", PAPER_RATING_SCALE)
        return float(lo), float(hi)

    def _case_path(self, code: str) -> Path:
        if code not in self.entry["order"]:
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
        self._case_path(code)
        shown = {role: str((self.readers_dir / path).resolve()) for role, path in self.entry["volumes"][code].items()}
        model = self.package.get("model")
        for path in shown.values() if model else ():
            problem = model_mismatch(path, model)  # a volume remade with another model after planning
            if problem:
                raise InputError(self.readers_dir, f"case {code}: {problem}; a session refuses a different model")
        return shown

    def _check_rating(self, rating) -> float:
        lo, hi = self.package.get("rating_scale", PAPER_RATING_SCALE)
        if not lo <= float(rating) <= hi:
            raise ValueError(f"rating must lie on this study's scale {lo} to {hi}, got {rating}")
        return float(rating) if not float(rating).is_integer() else int(rating)

    def add_mark(self, code: str, point_lps, rating: float, simulated: bool = False) -> int:
        rating = self._check_rating(rating)
        record = self.case_record(code)
        mark_id = record["next_id"]
        record["marks"].append({"id": mark_id, "point_lps": [float(v) for v in point_lps], "rating": rating,
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
            mark["rating"] = self._check_rating(rating)
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


def study_status(study_dir, readers_dir=None) -> list[dict]:
    """Progress of every planned session; sessions not yet started are not created by looking. ``readers_dir`` is the
    readers' package when it came back from the workstation to another place than the study folder's readers/."""
    from .package import read_key, readers_folder

    _, plan = read_key(study_dir)
    readers = readers_folder(readers_dir or study_dir)
    rows = []
    for s in plan["sessions"]:
        row = {"reader": s["reader"], "session": s["session"], "condition": s["condition"], "done": 0,
               "total": len(s["order"]), "washout_warning": "", "simulated": False}
        if (readers / "marks" / _safe(s["reader"]) / f"session{s['session']}" / "session.json").exists():
            session = ReadingSession(readers, s["reader"], s["session"])
            row["done"] = session.progress()[0]
            row["washout_warning"] = session.state.get("washout_warning", "")
            row["simulated"] = any(m.get("simulated") for c in s["order"] for m in session.case_record(c)["marks"])
        rows.append(row)
    return rows
