"""Batch synthesis over many studies: resumable, crash-safe, one bad case never stops the rest.

Each case's outcome is a small JSON status file written atomically *after* its output was renamed into
place, so a kill -9 at any moment leaves every finished case recorded and every unfinished one to redo.
The manifest CSV is rebuilt from those files. Under ``torchrun`` rank r takes cases r, r+W, r+2W, ...
so no two ranks ever write the same output.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InputError, SyntheticContrastError
from .fileio import atomic_write_csv, atomic_write_text
from .volume_io import READ_SUFFIXES, dicom_series_in

MANIFEST_FIELDS = ("case", "input", "status", "output", "sd_output", "dicom_output", "ood", "model_id", "model_sha256", "seconds", "rank",
                   "error", "finished")


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    series_uid: str | None = None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "case"


def discover_cases(source: str | Path) -> list[Case]:
    """Cases from a CSV manifest (columns case,input[,series]) or a folder tree of volumes and DICOM folders."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise InputError(source, "a batch input is a folder or a CSV manifest with columns case,input")
        with open(source, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"case", "input"} <= set(rows[0]):
            raise InputError(source, "CSV manifest needs the columns 'case' and 'input'")
        names = [r["case"] for r in rows]
        if len(set(names)) != len(names):
            raise InputError(source, "case names repeat; each case needs its own name (and output)")
        return [Case(_safe_name(r["case"]), str(source.parent / r["input"]), r.get("series") or None) for r in rows]
    cases = []
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        folder = Path(folder)
        volumes = sorted(f for f in files if f.lower().endswith(READ_SUFFIXES) and not f.startswith("."))
        for f in volumes:
            rel = (folder / f).relative_to(source)
            cases.append(Case(_safe_name(str(rel).split(".")[0].replace(os.sep, "__")), str(folder / f)))
        if any(not f.lower().endswith(READ_SUFFIXES) and not f.startswith(".") for f in files) and dicom_series_in(folder):
            rel = folder.relative_to(source)
            cases.append(Case(_safe_name(str(rel).replace(os.sep, "__")) if str(rel) != "." else "root", str(folder)))
    if not cases:
        raise InputError(source, "holds no NIfTI/NRRD/MHA files or DICOM series")
    return cases


class BatchRunner:
    """Runs cases of one shard; ``run`` returns the statuses of this rank's cases."""

    def __init__(self, out_dir, model, options, dicom: bool = False, rank: int = 0, world: int = 1,
                 say: Callable[[str], None] | None = None, strict: bool = False):
        self.out_dir = Path(out_dir)
        self.model, self.options, self.dicom, self.strict = model, options, dicom, strict
        self.rank, self.world = rank, world
        self.say = say or (lambda msg: None)
        for sub in ("outputs", "status", "logs"):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    def status_path(self, case: Case) -> Path:
        return self.out_dir / "status" / f"{case.name}.json"

    def output_path(self, case: Case) -> Path:
        return self.out_dir / "outputs" / f"{case.name}_sCECT_synthetic.nii.gz"

    def is_done(self, case: Case) -> bool:
        path = self.status_path(case)
        if not path.exists():
            return False
        status = json.loads(path.read_text())
        return status.get("status") == "done" and Path(status["output"]).exists()

    def shard(self, cases: list[Case]) -> list[Case]:
        return cases[self.rank :: self.world]

    def run_case(self, case: Case) -> dict:
        from .case import check_input, refuse_if_strict, synthesize_case, write_case
        from .dicom_export import source_files_of
        from .volume_io import read_volume

        log = logging.getLogger(f"batch.{case.name}")
        handler = logging.FileHandler(self.out_dir / "logs" / f"{case.name}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        t0 = time.perf_counter()
        for stale in (self.out_dir / "outputs").glob(f".{case.name}_sCECT_synthetic.*partial*"):
            stale.unlink()  # a temporary file left by a killed earlier attempt; never a finished output
        status = {"case": case.name, "input": case.input, "model_id": self.model.card.model_id,
                  "model_sha256": self.model.card.sha256, "rank": self.rank, "output": "", "sd_output": "", "dicom_output": "",
                  "ood": "", "error": ""}
        try:
            log.info("reading %s", case.input)
            volume = read_volume(case.input, series_uid=case.series_uid)
            findings = check_input(volume, self.model)
            status["ood"] = "; ".join(f.message for f in findings) if findings else "none"
            for finding in findings:
                log.warning("%s", finding.line())
            refuse_if_strict(volume, findings, self.strict)
            result = synthesize_case(volume, self.model, self.options, findings)
            for note in result.report.notes:
                log.info("note: %s", note)
            dicom_dir = None
            if self.dicom:
                dicom_dir = self.out_dir / "dicom" / f"{case.name}_SYNTHETIC"
                for left in (dicom_dir, dicom_dir.with_name(dicom_dir.name + "_SD")):
                    if left.exists():  # left by an earlier, interrupted attempt at this case
                        import shutil

                        shutil.rmtree(left)
            written = write_case(result, self.output_path(case), dicom_dir, source_files_of(volume) if self.dicom else None, self.model)
            status.update({key: str(path) for key, path in written.items() if key in status})
            status["status"] = "done"
            log.info("done: %s (%d windows, %s)", written["output"], result.report.windows, result.report.device)
        except Exception as exc:  # one bad case must never stop the batch; Ctrl-C (KeyboardInterrupt) still does
            message = str(exc) if isinstance(exc, SyntheticContrastError) else f"{case.input}: {type(exc).__name__}: {exc}"
            status.update(status="failed", error=message)
            log.exception("failed: %s", message)
        finally:
            log.removeHandler(handler)
            handler.close()
        status["seconds"] = round(time.perf_counter() - t0, 2)
        status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_text(self.status_path(case), json.dumps(status, indent=2) + "\n")
        return status

    def run(self, cases: list[Case], progress=None) -> list[dict]:
        mine = self.shard(cases)
        results = []
        for case in mine:
            if self.is_done(case):
                self.say(f"{case.name}: already done, skipped")
                results.append(json.loads(self.status_path(case).read_text()))
            else:
                results.append(self.run_case(case))
                self.write_manifest(cases)
            if progress is not None:
                progress(results[-1])
        self.write_manifest(cases)
        return results

    def write_manifest(self, cases: list[Case]) -> Path:
        """manifest.csv from the status files: one row per case, 'pending' where nothing finished yet."""
        rows = []
        for case in cases:
            path = self.status_path(case)
            row = json.loads(path.read_text()) if path.exists() else {"case": case.name, "input": case.input, "status": "pending"}
            rows.append({k: row.get(k, "") for k in MANIFEST_FIELDS})
        target = self.out_dir / "manifest.csv"
        atomic_write_csv(target, rows, MANIFEST_FIELDS)
        return target
