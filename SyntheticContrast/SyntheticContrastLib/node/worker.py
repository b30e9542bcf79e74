"""One worker per device: takes a complete series from the queue, synthesises it (with the out-of-distribution
checks and, with samples > 1, the uncertainty map), writes the derived series, and sends it back."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import InputError, MemoryBudgetError, ModelError, OutOfDistributionError, SynthesisCancelled
from .config import NodeConfig
from .queue import QueueError, SeriesQueue
from .receiver import event_fields
from .sender import SendError, send_cstore, send_stow

log = logging.getLogger("synthetic_contrast.node")
#: Beside each result: the SOP Instance UIDs the reader was given (each used, or left out with a note, such as a
#: localizer filed in the series), checked against what was acknowledged before sending.
MADE_FROM = "made_from.json"
HEARTBEAT_SECONDS = 2.0


class Superseded(Exception):
    """Instances arrived while the series was being worked: the result is not of the whole series."""


class Worker(threading.Thread):
    """``device`` is already resolved (engine.devices) and ``model`` loaded on it by the service, so a wrong device or
    model stops the node at start instead of failing every series."""

    def __init__(self, config: NodeConfig, queue: SeriesQueue, device: str, stop: threading.Event, model=None,
                 poll_seconds: float = 0.5, name: str | None = None):
        super().__init__(name=name or f"worker-{device}", daemon=True)
        self.config, self.queue, self.device, self.stop_event, self.poll = config, queue, device, stop, poll_seconds
        self._model = model
        self.fatal: BaseException | None = None  # what stopped this worker outside any series; the node exits non-zero
        self._beat_at = 0.0

    def model(self):
        if self._model is None:
            from ..engine.models import DEFAULT_MODEL_CARD, load_model

            self._model = load_model(self.config.model or DEFAULT_MODEL_CARD, device=self.device)
        return self._model

    def beat(self, state: str, series_uid: str = "", force: bool = False, error: str = "") -> None:
        now = time.time()
        if force or now - self._beat_at >= HEARTBEAT_SECONDS:
            self.queue.heartbeat(self.name, self.device, os.getpid(), state, series_uid, error, now=now)
            self._beat_at = now

    def run(self) -> None:
        try:
            self.beat("idle", force=True)
            while not self.stop_event.is_set():
                ready, failed = self.queue.promote_quiet(self.config.quiet_seconds, send_incomplete=self.config.send_incomplete)
                for uid in ready:
                    log.info("series complete", **event_fields("series_complete", series_uid=uid, reason="quiet time"))
                for uid, reason in failed:
                    log.error("series incomplete", **event_fields("failed", series_uid=uid, error=f"incomplete: {reason}",
                                                                  state="failed"))
                row = self.queue.claim()
                if row is None:
                    self.beat("idle")
                    self.stop_event.wait(self.poll)
                    continue
                self.work(row)
            self.beat("stopped", force=True)
        except BaseException as exc:  # the queue itself failed, or a bug outside any series: never die silently
            self.fatal = exc
            log.critical("worker stopped", **event_fields("worker_dead", worker=self.name, device=self.device,
                                                          error=f"{type(exc).__name__}: {exc}"))
            try:
                self.beat("dead", force=True, error=f"{type(exc).__name__}: {exc}")
            except Exception:  # the queue is what failed: the log line above is the record
                pass
            self.stop_event.set()  # the node stops and exits non-zero, so its supervisor restarts it

    def work(self, row) -> None:
        uid = row["series_uid"]
        triage = {"series_uid": uid, "patient_id": row["patient_id"], "accession": row["accession"]}
        try:
            if row["result_dir"]:
                result_dir = Path(row["result_dir"])
            else:
                self.beat("working", uid, force=True)
                result_dir = self.synthesize(row, triage)
            self.beat("uploading", uid, force=True)
            self.check_made_from(uid, result_dir)
            self.send(uid, result_dir, triage)
            if not self.queue.done(uid):
                raise Superseded("instances arrived while the result was being sent")
            latency = time.time() - row["last_received"]
            log.info("series done", **event_fields("done", study_uid=row["study_uid"], instances=row["instances"],
                                                   seconds_since_last_instance=round(latency, 2), **triage))
        except Superseded as exc:
            log.info("series reopened", **event_fields("reopened", reason=str(exc), **triage))
        except SynthesisCancelled:
            self.queue.put_back(uid)
            log.info("interrupted by shutdown", **event_fields("interrupted", **triage))
        except SendError as exc:
            self._failed(triage, str(exc), retry=True)
        except (InputError, OutOfDistributionError, ModelError, MemoryBudgetError) as exc:  # the series itself is the problem: retrying cannot help
            self._failed(triage, str(exc), retry=False)
        except (sqlite3.Error, QueueError):
            raise  # not this series' fault: the worker stops and the node with it
        except Exception as exc:  # MemoryError, a full disk, a bug: this series fails, the worker goes on
            self._failed(triage, f"{type(exc).__name__}: {exc}", retry=not isinstance(exc, MemoryError))
        finally:
            self.beat("idle", force=True)

    def _failed(self, triage: dict, error: str, retry: bool) -> None:
        state = self.queue.failed(triage["series_uid"], error, retry, self.config.max_attempts, self.config.retry_backoff_seconds)
        log.error("series failed", **event_fields("failed", error=error, state=state, **triage))

    def check_made_from(self, uid: str, result_dir: Path) -> None:
        """The result must hold every acknowledged instance of the series: fewer is never sent as done."""
        try:
            made_from = set(json.loads((result_dir / MADE_FROM).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise InputError(None, f"the result of series {uid} does not record the instances it was made from ({exc})") from exc
        acknowledged = self.queue.instance_uids(uid)
        missing = acknowledged - made_from
        if missing:
            raise InputError(None, f"the result was made before all {len(acknowledged)} acknowledged instances were in the "
                                   f"spool: {len(missing)} were not given to the reader (e.g. {sorted(missing)[0]})")

    def synthesize(self, row, triage: dict) -> Path:
        from ..engine.case import check_input, refuse_if_strict, synthesize_case, write_case
        from ..engine.inference import SynthesisOptions
        from ..io.dicom_export import check_source_exportable, source_files_of
        from ..io.reading import read_volume

        uid = row["series_uid"]
        result_dir = Path(self.config.spool) / "results" / uid
        if result_dir.exists():
            shutil.rmtree(result_dir)  # left by an attempt a kill or crash interrupted, or superseded
        started = time.time()
        log.info("synthesis started", **event_fields("synthesis_started", device=self.device, attempt=row["attempts"], **triage))
        model = self.model()
        # Listed before reading: an instance spooled after this is not in the list, and its arrival reopens the series.
        considered = sorted(path.stem for path in Path(row["folder"]).glob("*.dcm"))
        volume = read_volume(row["folder"])
        sources = source_files_of(volume)
        check_source_exportable(sources)
        findings = check_input(volume, model)
        refuse_if_strict(volume, findings, self.config.strict)
        options = SynthesisOptions(device=self.device, samples=self.config.samples)
        case = synthesize_case(volume, model, options, findings, cancel=self.stop_event.is_set,
                               progress=lambda done, total: self.beat("working", uid), strict=self.config.strict,
                               on_plan=lambda plan: self.check_plan(plan, triage))
        staging = result_dir.with_name(uid + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        if row["incomplete"]:
            log.warning("incomplete series synthesised", **event_fields("incomplete_sent", reason=row["incomplete"], **triage))
        write_case(case, staging / f"{uid}_sCECT_synthetic.nii.gz", staging / "dicom", sources, model,
                   incomplete=row["incomplete"])
        (staging / MADE_FROM).write_text(json.dumps(considered), encoding="utf-8")
        staging.replace(result_dir)
        if not self.queue.synthesized(uid, result_dir):
            shutil.rmtree(result_dir, ignore_errors=True)
            raise Superseded("instances arrived during the synthesis; it starts again with every instance")
        log.info("synthesized", **event_fields("synthesized", seconds=round(time.time() - started, 2), windows=case.report.windows,
                                               ood=case.ood_summary, plausibility=case.plausibility_summary,
                                               notes=case.report.notes, **triage))
        return result_dir

    def check_plan(self, plan, triage: dict) -> None:
        """Log the plan; refuse a series whose estimated peak exceeds the node's memory budget, before its synthesis
        can take the node (and every other series) down with it."""
        from ..engine import host_memory
        from ..engine.planner import MIB, windows

        log.info("plan", **event_fields("plan", line=plan.line(), host_peak_mib=round(plan.host_peak_bytes / MIB),
                                        batch=plan.batch_size, accumulator=plan.accumulator, **triage))
        if self.config.max_memory_mib:
            budget, source = int(self.config.max_memory_mib * MIB), "max_memory_mib"
        else:
            available, resident = host_memory.available_bytes(), host_memory.resident_bytes()
            if available is None or resident is None:
                return  # the system does not say: nothing to judge by
            budget, source = available + resident, "this process's memory plus what the host has available"
        if plan.host_peak_bytes > budget:
            raise MemoryBudgetError(None, f"series {triage['series_uid']} would need about {plan.host_peak_bytes / MIB:.0f} MiB "
                                          f"of host memory at its peak, more than the {budget / MIB:.0f} MiB budget "
                                          f"({source}), with {windows(plan.windows)} at batch {plan.batch_size} on "
                                          f"{plan.device_name}")

    def send(self, uid: str, result_dir: Path, triage: dict) -> None:
        from ..engine.case import uncertainty_dicom_dir

        dicom_dir = result_dir / "dicom"
        files = sorted(dicom_dir.glob("*.dcm")) + sorted(uncertainty_dicom_dir(dicom_dir).glob("*.dcm"))
        if not files:
            raise SendError(f"series {uid}: no result files to send")
        destination = self.config.destination_parts()
        if destination:
            send_cstore(files, self.config.ae_title, destination)
        if self.config.stow_url:
            send_stow(files, self.config.stow_url)
        log.info("sent", **event_fields("sent", files=len(files), destination=self.config.destination,
                                        stow_url=self.config.stow_url, **triage))
