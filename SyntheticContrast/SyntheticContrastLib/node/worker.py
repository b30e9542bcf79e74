"""One worker per device: takes a complete series from the queue, synthesises it (with the out-of-distribution
checks and, with samples > 1, the uncertainty map), writes the derived series, and sends it back."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from ..errors import InputError, OutOfDistributionError, SynthesisCancelled, SyntheticContrastError
from .config import NodeConfig
from .queue import SeriesQueue
from .receiver import event_fields
from .sender import SendError, send_cstore, send_stow

log = logging.getLogger("synthetic_contrast.node")


class Worker(threading.Thread):
    def __init__(self, config: NodeConfig, queue: SeriesQueue, device: str, stop: threading.Event, poll_seconds: float = 0.5):
        super().__init__(name=f"worker-{device}", daemon=True)
        self.config, self.queue, self.device, self.stop_event, self.poll = config, queue, device, stop, poll_seconds
        self._model = None

    def model(self):
        if self._model is None:
            from ..engine.models import DEFAULT_MODEL_CARD, load_model

            self._model = load_model(self.config.model or DEFAULT_MODEL_CARD, device=self.device)
        return self._model

    def run(self) -> None:
        while not self.stop_event.is_set():
            for uid in self.queue.promote_quiet(self.config.quiet_seconds):
                log.info("series complete", **event_fields("series_complete", series_uid=uid, reason="quiet time"))
            row = self.queue.claim()
            if row is None:
                self.stop_event.wait(self.poll)
                continue
            self.work(row)

    def work(self, row) -> None:
        uid = row["series_uid"]
        try:
            result_dir = Path(row["result_dir"]) if row["result_dir"] else self.synthesize(row)
            self.send(uid, result_dir, row)
            self.queue.done(uid)
            latency = time.time() - row["last_received"]
            log.info("series done", **event_fields("done", series_uid=uid, study_uid=row["study_uid"],
                                                   seconds_since_last_instance=round(latency, 2)))
        except SynthesisCancelled:
            self.queue.put_back(uid)
            log.info("interrupted by shutdown", **event_fields("interrupted", series_uid=uid))
        except SendError as exc:
            self._failed(uid, str(exc), retry=True)
        except (InputError, OutOfDistributionError) as exc:  # the series itself is the problem: retrying cannot help
            self._failed(uid, str(exc), retry=False)
        except (SyntheticContrastError, OSError, RuntimeError, ValueError) as exc:
            self._failed(uid, f"{type(exc).__name__}: {exc}", retry=True)

    def _failed(self, uid: str, error: str, retry: bool) -> None:
        state = self.queue.failed(uid, error, retry, self.config.max_attempts, self.config.retry_backoff_seconds)
        log.error("series failed", **event_fields("failed", series_uid=uid, error=error, state=state))

    def synthesize(self, row) -> Path:
        from ..engine.case import check_input, refuse_if_strict, synthesize_case, write_case
        from ..engine.inference import SynthesisOptions
        from ..io.dicom_export import source_files_of
        from ..io.reading import read_volume

        uid = row["series_uid"]
        result_dir = Path(self.config.spool) / "results" / uid
        if result_dir.exists():
            shutil.rmtree(result_dir)  # left by an attempt a kill or crash interrupted
        started = time.time()
        log.info("synthesis started", **event_fields("synthesis_started", series_uid=uid, device=self.device))
        model = self.model()
        volume = read_volume(row["folder"])
        findings = check_input(volume, model)
        refuse_if_strict(volume, findings, self.config.strict)
        options = SynthesisOptions(device=self.device, samples=self.config.samples)
        case = synthesize_case(volume, model, options, findings, cancel=self.stop_event.is_set)
        staging = result_dir.with_name(uid + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        write_case(case, staging / f"{uid}_sCECT_synthetic.nii.gz", staging / "dicom", source_files_of(volume), model)
        staging.replace(result_dir)
        self.queue.synthesized(uid, result_dir)
        log.info("synthesized", **event_fields("synthesized", series_uid=uid, seconds=round(time.time() - started, 2),
                                               windows=case.report.windows, ood=case.ood_summary, notes=case.report.notes))
        return result_dir

    def send(self, uid: str, result_dir: Path, row) -> None:
        from ..engine.case import uncertainty_dicom_dir

        dicom_dir = result_dir / "dicom"
        files = sorted(dicom_dir.glob("*.dcm")) + sorted(uncertainty_dicom_dir(dicom_dir).glob("*.dcm"))
        if not files:
            raise SendError(f"{result_dir}: no result files to send")
        destination = self.config.destination_parts()
        if destination:
            send_cstore(files, self.config.ae_title, destination)
        if self.config.stow_url:
            send_stow(files, self.config.stow_url)
        log.info("sent", **event_fields("sent", series_uid=uid, files=len(files), destination=self.config.destination,
                                        stow_url=self.config.stow_url))
