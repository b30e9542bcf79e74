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

from ..errors import InputError, OutputError, SyntheticContrastError
from ..fileio import NAME_BYTES, atomic_write_csv, atomic_write_text, safe_file_name, sha256_of
from ..io.dicom_series import dicom_series_in
from ..io.volume import READ_SUFFIXES, READER_NOTES, strip_volume_suffix

MANIFEST_FIELDS = ("case", "input", "status", "output", "sd_output", "dicom_output", "ood", "plausibility", "plan", "notes", "model_id", "model_sha256", "seconds", "rank",
                   "error", "finished")


@dataclass(frozen=True)
class Case:
    name: str
    input: str
    series_uid: str | None = None


def _changed(status: dict) -> dict:
    """A finished case whose output was altered afterwards: reported as failed, and its output left as it is."""
    return {**status, "status": "failed", "error": f"{status['output']}: changed since this batch wrote it (sha256 differs); "
            "it is not overwritten: move it away to redo this case"}


def unique_case_names(relative_paths: list[str]) -> list[str]:
    """Stable, unique case names from the inputs' paths relative to the batch folder.

    The name is the path, volume suffix removed, folders joined by '__', made safe for a file name. Where that
    loses information (characters replaced) or two inputs would share a name (a file and a folder of the same
    stem), a short hash of the exact relative path is appended: the same input always gets the same name.
    """
    import hashlib

    stems = [strip_volume_suffix(rel).replace("/", "__").replace(os.sep, "__") for rel in relative_paths]
    tag = lambda name, rel: f"{name}-{hashlib.sha256(rel.encode('utf-8')).hexdigest()[:8]}"
    # A name that lost characters is always tagged, so an exact name ('bed_2') keeps its name when a folded one
    # ('bed 2' -> 'bed_2') appears beside it later.
    # Room for the tag: a name cut short by safe_file_name is never also tagged here past the file system's limit.
    names = [name if name == stem else tag(name, rel)
             for rel, stem, name in zip(relative_paths, stems, (safe_file_name(s, NAME_BYTES - 9) for s in stems))]
    return [tag(name, rel) if names.count(name) > 1 else name for rel, name in zip(relative_paths, names)]


def is_default_case(relative: str, siblings: set[str]) -> bool:
    """The naming rules a folder tree is read by when no --include is given: a synthetic volume (this tool's output)
    is never an input, and a '<x>_cect' volume beside its '<x>_ncct' is that pair's reference (the phantom's and
    `pairs`' layout), not a case."""
    name = Path(relative).name
    if "synthetic" in name.lower():
        return False
    stem = strip_volume_suffix(name)
    if stem.lower().endswith("_cect"):
        return not any(strip_volume_suffix(s).lower() == stem.lower()[:-5] + "_ncct" for s in siblings)
    return True


def select_cases(found: list[tuple[str, str]], include=(), exclude=()) -> list[tuple[str, str]]:
    """(relative path, input) pairs kept by glob patterns on the relative path; without --include, the default
    naming rules (is_default_case) decide."""
    from fnmatch import fnmatch

    by_folder: dict[str, set[str]] = {}
    for rel, _ in found:
        by_folder.setdefault(str(Path(rel).parent), set()).add(Path(rel).name)
    kept = []
    for rel, path in found:
        posix = Path(rel).as_posix()
        if include:
            if not any(fnmatch(posix, pattern) for pattern in include):
                continue
        elif not is_default_case(rel, by_folder[str(Path(rel).parent)]):
            continue
        if any(fnmatch(posix, pattern) for pattern in exclude):
            continue
        kept.append((rel, path))
    return kept


def discover_cases(source: str | Path, include=(), exclude=()) -> list[Case]:
    """Cases from a CSV manifest (columns case,input[,series]) or a folder tree of volumes and DICOM folders, the
    tree's filtered by ``include``/``exclude`` globs on each input's path relative to ``source``."""
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
        names = [safe_file_name(r["case"]) for r in rows]
        repeated = sorted({r["case"] for r, n in zip(rows, names) if names.count(n) > 1})
        if repeated:
            raise InputError(source, f"case names repeat (after making them safe for file names): {', '.join(repeated)}; "
                             "each case needs its own name, so that no output overwrites another")
        return [Case(n, str(source.parent / r["input"]), r.get("series") or None) for r, n in zip(rows, names)]
    found = []  # (path relative to the batch folder, input path)
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        folder = Path(folder)
        volumes = sorted(f for f in files if f.lower().endswith(READ_SUFFIXES) and not f.startswith("."))
        for f in volumes:
            found.append((str((folder / f).relative_to(source)), str(folder / f)))
        if any(not f.lower().endswith(READ_SUFFIXES) and not f.startswith(".") for f in files) and dicom_series_in(folder):
            rel = str(folder.relative_to(source))
            found.append((rel if rel != "." else "root", str(folder)))
    if not found:
        raise InputError(source, "holds no NIfTI/NRRD/MHA files or DICOM series")
    found = select_cases(sorted(found), include, exclude)
    if not found:
        raise InputError(source, f"no input is left after the patterns (include {list(include) or 'the default rules'}, "
                                 f"exclude {list(exclude)})")
    return [Case(name, path) for name, (_, path) in zip(unique_case_names([rel for rel, _ in found]), found)]


class BatchRunner:
    """Runs cases of one shard; ``run`` returns the statuses of this rank's cases."""

    def __init__(self, out_dir, model, options, dicom: bool = False, rank: int = 0, world: int = 1,
                 say: Callable[[str], None] | None = None, strict: bool = False, plausibility_map: bool = False,
                 overwrite: bool = False, shard: tuple[int, int] = (1, 1)):
        self.out_dir = Path(out_dir)
        self.model, self.options, self.dicom, self.strict = model, options, dicom, strict
        self.plausibility_map, self.overwrite = plausibility_map, overwrite
        self.shard_index, self.shard_count = shard  # 1-based: shard 2 of 4 (a SLURM array task), then torchrun ranks
        self.rank, self.world = rank, world
        self.say = say or (lambda msg: None)
        self._digests = {}  # (path, mtime, size) -> sha256: the manifest is rebuilt after every case
        self._corrupt: set[str] = set()  # cases whose status file was named as unreadable
        for sub in ("outputs", "status", "logs"):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    def status_path(self, case: Case) -> Path:
        return self.out_dir / "status" / f"{case.name}.json"

    def output_path(self, case: Case) -> Path:
        return self.out_dir / "outputs" / f"{case.name}_sCECT_synthetic.nii.gz"

    def is_done(self, case: Case) -> bool:
        return self._finished_state(case) == "done"

    def read_status(self, case: Case) -> dict | None:
        """The case's status file, or None when there is none, or it is not a JSON object (a disk fault, a hand edit):
        then it is named once and the case is done again, instead of stopping every rerun of the batch."""
        path = self.status_path(case)
        if not path.exists():
            return None
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            status = exc
        if not isinstance(status, dict):
            if case.name not in self._corrupt:
                self._corrupt.add(case.name)
                self.say(f"{case.name}: status file {path} is not readable JSON ({status}); the case is done again")
            return None
        return status

    def _finished_state(self, case: Case) -> str:
        """'done' (output there, sha256 as written), 'changed' (output altered since), 'other-model' (made by
        another model than this run's), or 'todo'."""
        status = self.read_status(case)
        if status is None:
            return "todo"
        output = Path(status.get("output") or "")
        if status.get("status") != "done" or not output.is_file():
            return "todo"
        expected = status.get("output_sha256")
        if expected is not None and self._digest(output) != expected:
            return "changed"  # altered since: never overwritten, whatever the model
        return "other-model" if status.get("model_sha256") not in (None, self.model.card.sha256) else "done"

    def _digest(self, path: Path) -> str:
        """sha256 of an output, read once per run unless the file changes: rebuilding the manifest after every case
        must not read every finished output again."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in self._digests:
            self._digests[key] = sha256_of(path)
        return self._digests[key]

    def shard(self, cases: list[Case]) -> list[Case]:
        """This process's cases: every shard_count-th case from shard_index, then every world-th of those."""
        return cases[self.shard_index - 1 :: self.shard_count][self.rank :: self.world]

    def run_case(self, case: Case) -> dict:
        from .case import check_input, ood_summary, refuse_if_strict, synthesize_case, uncertainty_dicom_dir, write_case
        from ..io.dicom_export import check_source_exportable, source_files_of
        from ..io.reading import read_volume

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
                  "ood": "", "plausibility": "", "plan": "", "notes": "", "error": ""}

        def planned(plan) -> None:  # before the first window: a case that never finishes still shows what it needed
            status["plan"] = plan.line()
            log.info("plan: %s", plan.line())
            self.say(f"{case.name}: plan: {plan.line()}")

        try:
            log.info("reading %s", case.input)
            volume = read_volume(case.input, series_uid=case.series_uid)
            status["notes"] = "; ".join(volume.metadata.get(READER_NOTES, []))  # what the reader did on its own
            if self.dicom:
                check_source_exportable(source_files_of(volume))  # before the synthesis it would waste
            findings = check_input(volume, self.model)
            status["ood"] = ood_summary(findings, self.model)
            for finding in findings:
                log.warning("%s", finding.line())
            refuse_if_strict(volume, findings, self.strict)
            result = synthesize_case(volume, self.model, self.options, findings, strict=self.strict, on_plan=planned)
            status["plausibility"] = result.plausibility_summary
            for finding in result.plausibility:
                log.warning("%s", finding.line())
            for note in result.report.notes:
                log.info("note: %s", note)
            dicom_dir = None
            if self.dicom:
                dicom_dir = self.out_dir / "dicom" / f"{case.name}_SYNTHETIC"
                for left in (dicom_dir, uncertainty_dicom_dir(dicom_dir)):
                    if left.exists():  # left by an earlier, interrupted attempt at this case
                        import shutil

                        shutil.rmtree(left)
            written = write_case(result, self.output_path(case), dicom_dir, source_files_of(volume) if self.dicom else None, self.model,
                                 plausibility_map=self.plausibility_map)
            status.update({key: str(path) for key, path in written.items() if key in status})
            status["output_sha256"] = self._digest(Path(written["output"]))
            status["status"] = "done"
            log.info("done: %s (%d windows, %s)", written["output"], result.report.windows, result.report.device)
        except Exception as exc:  # one bad case must never stop the batch; Ctrl-C (KeyboardInterrupt) still does
            message = str(exc) if isinstance(exc, SyntheticContrastError) else f"{case.input}: {type(exc).__name__}: {exc}"
            status.update(status="failed", error=message)
            if self.output_path(case).exists():  # e.g. the volume was written and the DICOM export then failed
                status["output"] = str(self.output_path(case))
            if isinstance(exc, SyntheticContrastError):
                log.error("failed: %s", message)  # a known problem of this input: its one-line reason says it all
            else:
                log.exception("failed: %s", message)  # unexpected: the traceback is for whoever fixes it
        finally:
            log.removeHandler(handler)
            handler.close()
        status["seconds"] = round(time.perf_counter() - t0, 2)
        status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_text(self.status_path(case), json.dumps(status, indent=2) + "\n")
        return status

    def check_one_model(self, cases: list[Case]) -> None:
        """A folder's outputs all come from one model: outputs another model made are refused by name, before any
        work, unless ``overwrite`` says to make them again with this one. Never a mix, never a silent skip."""
        others = [self.read_status(c) for c in cases if self._finished_state(c) == "other-model"]
        if others and not self.overwrite:
            made_by = sorted({f"{s.get('model_id')} (sha256 {str(s.get('model_sha256'))[:12]})" for s in others})
            raise OutputError(self.out_dir, f"holds the outputs of {len(others)} case(s) made by model {', '.join(made_by)}; this run's "
                                            f"model is {self.model.card.model_id} (sha256 {self.model.card.sha256[:12]}). Give another "
                                            "output folder, or --overwrite to make them again with this model")

    def run(self, cases: list[Case], progress=None) -> list[dict]:
        mine = self.shard(cases)
        self.check_one_model(mine)
        results = []
        for case in mine:
            state = self._finished_state(case)
            if state == "done":
                self.say(f"{case.name}: already done (output sha256 checked), skipped")
                results.append(self.read_status(case))
            elif state == "changed":
                status = _changed(self.read_status(case))
                self.say(f"{case.name}: {status['error']}")
                results.append(status)
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
            status = self.read_status(case)
            row = status if status is not None else {"case": case.name, "input": case.input, "status": "pending"}
            if status is not None and self._finished_state(case) == "changed":
                row = _changed(row)
            rows.append({k: row.get(k, "") for k in MANIFEST_FIELDS})
        target = self.out_dir / "manifest.csv"
        atomic_write_csv(target, rows, MANIFEST_FIELDS)
        return target


def parse_shard(text: str | None, environ=os.environ) -> tuple[int, int]:
    """'2/4' -> (2, 4). Without it, a SLURM array task's own index and count (SLURM_ARRAY_TASK_ID from
    SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT), else (1, 1): the whole batch."""
    if text is None and "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        text = f"{int(environ['SLURM_ARRAY_TASK_ID']) - int(environ.get('SLURM_ARRAY_TASK_MIN', 0)) + 1}/{environ['SLURM_ARRAY_TASK_COUNT']}"
    if text is None:
        return 1, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise InputError(None, f"--shard {text!r}: give K/N, such as 2/4") from exc
    if not 1 <= index <= count:
        raise InputError(None, f"--shard {text!r}: K must be 1 to N")
    return index, count
