"""Running the node: JSON-line logging, the receiver and one worker per device, recovery after a restart, clean
shutdown on SIGTERM; and the ``status`` and ``retry`` views of a spool."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from . import spool
from .config import NodeConfig
from .queue import OPEN_STATES, SeriesQueue
from .receiver import Receiver, event_fields
from .worker import Worker

log = logging.getLogger("synthetic_contrast.node")
QUEUE_FILE = "queue.sqlite"
LOG_FILE = "node.log.jsonl"


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


def recover(config: NodeConfig, queue: SeriesQueue) -> None:
    """What a kill left: partial files (never acknowledged) go, spooled series the queue missed are recorded and
    complete by quiet time, interrupted work starts again."""
    removed = spool.remove_partials(config.spool)
    for study, series, folder in spool.unrecorded_series(config.spool, queue.known_folders()):
        for _ in folder.glob("*.dcm"):
            queue.record_instance(series, study, folder, "")
    resumed = queue.recover()
    if removed or resumed:
        log.info("recovered", **event_fields("recovered", partial_files_removed=removed, series_resumed=resumed))


def serve(config: NodeConfig) -> int:
    config.spool.mkdir(parents=True, exist_ok=True)
    _setup_logging(config.spool)
    queue = open_queue(config.spool)
    recover(config, queue)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stop.set())
    receiver = Receiver(config, queue)
    receiver.start()
    workers = [Worker(config, queue, device, stop) for device in config.devices]
    for worker in workers:
        worker.start()
    while not stop.wait(1.0):
        pass
    log.info("stopping", **event_fields("stopping"))
    receiver.stop()  # no new instances; what was acknowledged is already on disk
    for worker in workers:
        worker.join(timeout=120)
    queue.close()
    log.info("stopped", **event_fields("stopped"))
    return 0


def status_report(spool_dir: Path, now: float | None = None) -> dict:
    """Queue counts by state, the last errors, and throughput and latency over the last hour."""
    now = time.time() if now is None else now
    queue = open_queue(spool_dir)
    try:
        rows = [dict(r) for r in queue.rows()]
    finally:
        queue.close()
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    recent = [r for r in rows if r["state"] == "done" and r["finished"] and r["finished"] >= now - 3600]
    latencies = sorted(r["finished"] - r["last_received"] for r in recent)
    errors = [{"series_uid": r["series_uid"], "state": r["state"], "attempts": r["attempts"], "error": r["error"]}
              for r in rows if r["error"]][-5:]
    return {"counts": counts, "open": sum(counts.get(s, 0) for s in OPEN_STATES), "done_last_hour": len(recent),
            "series_per_minute_last_hour": round(len(recent) / 60.0, 3),
            "median_latency_s": round(latencies[len(latencies) // 2], 2) if latencies else None, "last_errors": errors}


def retry_failed(spool_dir: Path) -> int:
    queue = open_queue(spool_dir)
    try:
        return queue.retry_failed()
    finally:
        queue.close()
