"""A planned study as two folders: ``readers/``, the package a reading workstation gets (volumes under opaque names,
the session orders, the marks), and ``key/``, the administrator's (the plan that maps codes to cases, the study, the
truth). Every path inside is relative, so the study folder can be copied or moved whole."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write_text, read_json_object

KEY_DIR, READERS_DIR = "key", "readers"
PACKAGE_FILE = "package.json"
#: What a copied volume keeps of its provenance: that it is synthetic and which model made it. Notes and findings
#: can name the source file, and the synthesis date can tell cases apart, so they stay with the originals.
KEPT_PROVENANCE = ("synthetic", "label", "model_id", "model_sha256", "map", "map_labels", "samples", "stride", "blend",
                   "windows")


def _package_format() -> str:
    from .sessions import STUDY_FORMAT

    return STUDY_FORMAT + "-readers"


def _volume_name(secret: str, case_id: str, role: str) -> str:
    """An opaque file name: from the plan's secret, so nobody without the key can work back to the case."""
    return "V" + hashlib.sha256(f"{secret}|volume|{case_id}|{role}".encode()).hexdigest()[:10].upper() + ".nrrd"


def _copy_for_readers(source: str, target: Path, role: str) -> None:
    """The voxels and geometry only, as NRRD: no DICOM header, file name or note can reach the reader. An sCECT
    stays labelled synthetic whatever its source file kept (a NIfTI sCECT holds its provenance in its sidecar and its
    header extension)."""
    from ..io.reading import read_volume, synthetic_provenance, write_volume
    from ..io.volume import PROVENANCE_PREFIX

    volume = read_volume(source, check_hu=False)
    provenance = synthetic_provenance(source) if Path(source).is_file() else None
    fields = {k[len(PROVENANCE_PREFIX):]: v for k, v in volume.metadata.items() if k.startswith(PROVENANCE_PREFIX)}
    if provenance is not None:
        fields.update({k: v for k, v in (provenance.get("sidecar") or {}).items() if isinstance(v, (str, int, float))})
        fields.update(synthetic="true", model_id=provenance["model_id"] or "", model_sha256=provenance["sha256"] or "")
        fields.setdefault("label", provenance["label"])
    if role == "scect" and fields.get("synthetic") != "true":
        fields.update(synthetic="true", label="SYNTHETIC contrast-enhanced CT - not acquired, not for diagnosis")
    kept = {PROVENANCE_PREFIX + k: str(fields[k]) for k in KEPT_PROVENANCE if fields.get(k) not in (None, "")}
    if fields.get("synthetic") == "true":
        kept["ITK_FileNotes"] = str(fields["label"])[:79]  # where every reader of the header looks first
    write_volume(volume.with_array(volume.array, **kept), target)


def write_plan(study_path: str | Path, out_dir: str | Path) -> dict:
    """Plan a study into ``out_dir``: ``key/`` (study.json, plan.json, truth/) and ``readers/`` (package.json and
    volumes/). An existing plan is never replaced."""
    from .sessions import load_study, make_plan, planned_model

    out_dir = Path(out_dir)
    for existing in (out_dir / KEY_DIR / "plan.json", out_dir / "plan.json"):
        if existing.exists():
            raise InputError(existing, "a plan exists already; plan a new study in a new folder")
    study = load_study(study_path)
    plan = make_plan(study)
    model = planned_model(study, study_path)
    if model:
        plan["model"] = model
    key, readers = out_dir / KEY_DIR, out_dir / READERS_DIR
    (key / "truth").mkdir(parents=True, exist_ok=True)
    (readers / "volumes").mkdir(parents=True, exist_ok=True)
    shown = {role for s in plan["sessions"] for role in s["shows"]}
    kept_study = {k: v for k, v in study.items() if k != "cases"}
    kept_study["cases"], volumes = [], {}
    for n, case in enumerate(study["cases"]):
        kept = {"id": case["id"], "originals": {}}
        for role, path in case.items():
            if role == "id" or not isinstance(path, str):
                continue
            kept["originals"][role] = path  # for the administrator's audit; nothing reads them again
            if role == "truth":
                target = key / "truth" / f"case{n + 1}.json"
                shutil.copyfile(path, target)
            else:
                folder = readers / "volumes" if role in shown else key / "volumes"
                folder.mkdir(exist_ok=True)
                target = folder / _volume_name(plan["code_secret"], case["id"], role)
                _copy_for_readers(path, target, role)
                volumes[(case["id"], role)] = target
            kept[role] = Path(os.path.relpath(target, key)).as_posix()
        kept_study["cases"].append(kept)
    package = {"format": _package_format(), "rating_scale": study["rating_scale"], "washout_days": plan["washout_days"],
               **({"model": model} if model else {}), "sessions": []}
    for s in plan["sessions"]:
        package["sessions"].append({
            "reader": s["reader"], "session": s["session"], "shows": s["shows"], "order": s["order"],
            "volumes": {code: {role: volumes[(s["key"][code], role)].relative_to(readers).as_posix() for role in s["shows"]}
                        for code in s["order"]},
        })
    atomic_write_text(key / "study.json", json.dumps(kept_study, indent=2) + "\n")
    atomic_write_text(readers / PACKAGE_FILE, json.dumps(package, indent=2) + "\n")
    atomic_write_text(key / "plan.json", json.dumps(plan, indent=2) + "\n")  # last: its presence means "planned"
    return plan


def _legacy(folder: Path) -> bool:
    """A study planned before the key moved out of the readers' folder: study.json and plan.json side by side."""
    return (folder / "plan.json").is_file() and (folder / "study.json").is_file()


def read_key(study_dir: str | Path) -> tuple[dict, dict]:
    """The administrator's study (its paths made absolute) and plan, from a study folder."""
    study_dir = Path(study_dir)
    key = study_dir if _legacy(study_dir) else study_dir / KEY_DIR
    for name in ("study.json", "plan.json"):
        if not (key / name).is_file():
            raise InputError(study_dir, f"has no {KEY_DIR}/{name}; run 'reader-study plan' first (the administrator's "
                                        "study folder holds key/ and readers/)")
    study, plan = read_json_object(key / "study.json", "a study file"), read_json_object(key / "plan.json", "a reading plan")
    for case in study.get("cases", []):
        for role, path in list(case.items()):
            if role != "id" and isinstance(path, str):
                case[role] = str((key / path).resolve())
    return study, plan


def readers_folder(folder: str | Path) -> Path:
    """The readers' package a reader or an analysis points at: the package itself, or the study folder holding it."""
    folder = Path(folder)
    for candidate in (folder, folder / READERS_DIR):
        if (candidate / PACKAGE_FILE).is_file():
            return candidate
    if _legacy(folder):
        return folder
    raise InputError(folder, f"holds no {PACKAGE_FILE}: choose the readers' folder that 'reader-study plan' wrote "
                             f"({READERS_DIR}/ in the study folder)")


def read_package(readers_dir: Path) -> dict:
    """The sessions a reader can open: orders of codes and the volumes to show for each, paths relative to the
    package. A legacy study folder gives the same from its plan."""
    if (readers_dir / PACKAGE_FILE).is_file():
        package = read_json_object(readers_dir / PACKAGE_FILE, "a readers' package")
        if package.get("format") != _package_format():
            raise InputError(readers_dir / PACKAGE_FILE, f"format must be {_package_format()!r}")
        return package
    study, plan = read_key(readers_dir)
    cases = {c["id"]: c for c in study["cases"]}
    return {"format": "legacy", "rating_scale": study.get("rating_scale", [1, 4]), "washout_days": plan["washout_days"],
            **({"model": plan["model"]} if plan.get("model") else {}),
            "sessions": [{**s, "volumes": {code: {role: cases[s["key"][code]][role] for role in s["shows"]}
                                           for code in s["order"]}} for s in plan["sessions"]]}
