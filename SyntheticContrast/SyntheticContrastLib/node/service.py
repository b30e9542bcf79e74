"""Running the node: checks at start, JSON-line logging, the receiver and one worker per device, recovery after a
restart, spool retention, clean shutdown on SIGTERM; and the ``status`` and ``retry`` views of a spool."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from . import spool
from .config import NodeConfig
from .queue import OPEN_STATES, SeriesQueue
from .receiver import Receiver, event_fields
from .sender import SendError, echo
from .worker import Worker

log = logging.getLogger("synthetic_contrast.node")
QUEUE_FILE = "queue.sqlite"
LOG_FILE = "node.log.jsonl"
#: A worker whose heartbeat is older than this is shown as not answering by ``serve status``.
STALE_HEARTBEAT_SECONDS = 60.0
RETENTION_CHECK_SECONDS = 60.0


class StartError(Exception):
    """The node cannot start as configured: the model, a device or a destination. Nothing was listened to."""


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, event and its fields, for log shippers and ``jq``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": round(record.created, 3), "level": record.levelname.lower(),
                "event": getattr(record, "event", "message"), "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _setup_logging(spool_dir: Path) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(spool_dir / LOG_FILE, encoding="utf-8")):
        handler.setFormatter(JsonLines())
        log.addHandler(handler)


def open_queue(spool_dir: Path) -> SeriesQueue:
    return SeriesQueue(Path(spool_dir) / QUEUE_FILE)


def prepare_workers(config: NodeConfig) -> list[tuple[str, str, object]]:
    """(asked, resolved device, model loaded on it) for each worker, and every destination answering C-ECHO: what
    would otherwise fail every series only when a study arrives."""
    from ..engine.devices import resolve_device
    from ..engine.models import DEFAULT_MODEL_CARD, load_model

    prepared = []
    for asked in config.devices:
        try:
            device = str(resolve_device(asked))
        except ValueError as exc:
            raise StartError(f"device: {exc}") from exc
        prepared.append((asked, device, load_model(config.model or DEFAULT_MODEL_CARD, device=device)))
    destination = config.destination_parts()
    if destination:
        try:
            echo(config.ae_title, destination)
        except SendError as exc:
            raise StartError(str(exc)) from exc
    return prepared


def recover(config: NodeConfig, queue: SeriesQueue) -> None:
    """What a kill left: partial files (never acknowledged) go; spooled instances the queue had not recorded are
    recorded (a kill between the spool's fsync and the queue's commit); interrupted work starts again, except a series
    that was taken ``max_attempts`` times, which is failed instead of crashing the node on every restart."""
    removed = spool.remove_partials(config.spool)
    open_folders = {r["folder"] for r in queue.rows() if r["state"] in OPEN_STATES}
    unknown = {str(folder) for _, _, folder in spool.unrecorded_series(config.spool, queue.known_folders())}
    added = 0
    for study, series, folder in spool.spooled_series(config.spool):
        if str(folder) not in open_folders | unknown:
            continue
        recorded = queue.instance_uids(series)
        for path in folder.glob("*.dcm"):
            if path.stem not in recorded:
                queue.record_instance(series, study, folder, "", path.stem)
                added += 1
    resumed, poison = queue.recover(config.max_attempts)
    for uid in poison:
        log.error("series failed", **event_fields("failed", series_uid=uid, state="failed",
                                                  error="the node stopped while working on it too often"))
    if removed or resumed or added or poison:
        log.info("recovered", **event_fields("recovered", partial_files_removed=removed, instances_recorded=added,
                                             series_resumed=resumed, series_failed=poison))


def purge_expired(config: NodeConfig, queue: SeriesQueue, now: float | None = None) -> list[str]:
    """Delete the spooled inputs and the result of every series sent more than ``retention_hours`` ago, oldest
    first. A series not yet sent is never deleted."""
    if config.retention_hours <= 0:
        return []
    now = time.time() if now is None else now
    purged = []
    for row in queue.expired(now - config.retention_hours * 3600):
        for folder in (row["folder"], row["result_dir"]):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        queue.purged(row["series_uid"], now=now)
        purged.append(row["series_uid"])
    if purged:
        log.info("purged", **event_fields("purged", series=purged, retention_hours=config.retention_hours))
    return purged


def serve(config: NodeConfig) -> int:
    """Run until SIGTERM or SIGINT (exit 0), or until a worker dies outside any series (exit 1, so a supervisor
    restarts the node). Raises StartError before listening if the model, a device or a destination is unusable."""
    from ..engine.models import DEFAULT_MODEL_CARD

    config.spool.mkdir(parents=True, exist_ok=True)
    prepared = prepare_workers(config)
    _setup_logging(config.spool)
    queue = open_queue(config.spool)
    recover(config, queue)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stop.set())
    receiver = Receiver(config, queue)
    receiver.start()
    workers = [Worker(config, queue, device, stop, model=model, name=f"worker-{i}-{device}")
               for i, (asked, device, model) in enumerate(prepared)]
    card = prepared[0][2].card
    log.info("listening", **event_fields(
        "listening", bind=config.bind_address(), port=config.port, ae_title=config.ae_title, tls=bool(config.tls_cert),
        allow=config.allow, allow_hosts=config.allow_hosts, model=card.model_id, model_sha256=card.sha256,
        model_card=str(config.model or DEFAULT_MODEL_CARD), devices=[device for _, device, _ in prepared],
        destination=config.destination, stow_url=config.stow_url))
    for (asked, device, _), worker in zip(prepared, workers):
        log.info("worker ready", **event_fields("worker_ready", worker=worker.name, device_asked=asked, device=device))
        worker.start()
    last_purge = 0.0
    while not stop.wait(1.0):
        if time.monotonic() - last_purge >= RETENTION_CHECK_SECONDS:
            purge_expired(config, queue)
            last_purge = time.monotonic()
    log.info("stopping", **event_fields("stopping"))
    still_open = receiver.stop(config.shutdown_grace_seconds)  # no new associations; what was acknowledged is on disk
    if still_open:
        log.warning("associations closed", **event_fields("associations_closed", count=still_open,
                                                           grace_seconds=config.shutdown_grace_seconds))
    for worker in workers:
        worker.join(timeout=120)
    dead = [w for w in workers if w.fatal is not None]
    queue.close()
    log.info("stopped", **event_fields("stopped", dead_workers=[w.name for w in dead]))
    return 1 if dead else 0


def status_report(spool_dir: Path, now: float | None = None) -> dict:
    """Queue counts by state, each worker's heartbeat, the last errors, and throughput and latency over the last hour."""
    now = time.time() if now is None else now
    queue = open_queue(spool_dir)
    try:
        rows = [dict(r) for r in queue.rows()]
        workers = [dict(w) for w in queue.workers()]
    finally:
        queue.close()
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    recent = [r for r in rows if r["state"] == "done" and r["finished"] and r["finished"] >= now - 3600]
    latencies = sorted(r["finished"] - r["last_received"] for r in recent)
    errors = [{"series_uid": r["series_uid"], "patient_id": r["patient_id"], "accession": r["accession"], "state": r["state"],
               "attempts": r["attempts"], "error": r["error"]} for r in rows if r["error"]][-5:]
    for worker in workers:
        worker["heartbeat_age_s"] = round(now - worker.pop("heartbeat"), 1)
        worker["answering"] = worker["state"] not in ("stopped", "dead") and worker["heartbeat_age_s"] <= STALE_HEARTBEAT_SECONDS
    return {"counts": counts, "open": sum(counts.get(s, 0) for s in OPEN_STATES), "done_last_hour": len(recent),
            "series_per_minute_last_hour": round(len(recent) / 60.0, 3),
            "median_latency_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "workers": workers, "last_errors": errors}


def status_table(report: dict) -> str:
    """``serve status`` for a person: the queue, the workers and the last errors, one line each."""
    counts = ", ".join(f"{state} {n}" for state, n in sorted(report["counts"].items())) or "empty"
    lines = [f"queue: {counts} ({report['open']} open)",
             f"last hour: {report['done_last_hour']} done, median latency "
             f"{report['median_latency_s'] if report['median_latency_s'] is not None else '-'} s"]
    for w in report["workers"]:
        health = "answering" if w["answering"] else ("stopped" if w["state"] == "stopped" else "NOT ANSWERING")
        doing = f" on {w['series_uid']}" if w["series_uid"] else ""
        error = f"; error: {w['error']}" if w["error"] else ""
        lines.append(f"worker {w['name']} ({w['device']}, pid {w['pid']}): {w['state']}{doing}, heartbeat "
                     f"{w['heartbeat_age_s']} s ago, {health}{error}")
    for e in report["last_errors"]:
        who = " ".join(x for x in (e["patient_id"] and f"patient {e['patient_id']}", e["accession"] and f"accession {e['accession']}") if x)
        lines.append(f"error [{e['state']}, attempt {e['attempts']}] {e['series_uid']}{' (' + who + ')' if who else ''}: {e['error']}")
    return "\n".join(lines)


def retry_failed(spool_dir: Path) -> int:
    queue = open_queue(spool_dir)
    try:
        return queue.retry_failed()
    finally:
        queue.close()
