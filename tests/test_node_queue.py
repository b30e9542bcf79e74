"""The node's queue as a state machine, transition by transition, with the states and guarantees the README and the
queue's docstring promise: late instances reopen a series, an aborted transfer is never sent short, attempts count
crashes, and a worker survives any one series' failure. States are named literally, not imported."""

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from SyntheticContrastLib.errors import InputError
from SyntheticContrastLib.node.queue import QueueError, SeriesQueue

UID, STUDY = "1.2.3", "1.2"


@pytest.fixture
def queue(tmp_path):
    q = SeriesQueue(tmp_path / "q.sqlite")
    yield q
    q.close()


def state(queue, uid=UID):
    return queue.rows()[[r["series_uid"] for r in queue.rows()].index(uid)]


def receive(queue, n, start=0, now=100.0, uid=UID):
    for i in range(start, start + n):
        queue.record_instance(uid, STUDY, Path("/spool") / uid, "PACS", f"{uid}.{i}", now=now)


def test_a_series_goes_receiving_ready_working_uploading_done(queue):
    receive(queue, 3)
    assert state(queue)["state"] == "receiving" and state(queue)["instances"] == 3
    receive(queue, 1, start=2)  # the same SOP instance again: still 3 instances
    assert state(queue)["instances"] == 3
    assert queue.promote_quiet(30, now=129.0) == ([], []) and queue.promote_quiet(30, now=130.0) == ([UID], [])
    row = queue.claim(now=131.0)
    assert row["state"] == "working" and row["attempts"] == 1  # counted when taken, before any work
    assert queue.claim(now=131.0) is None  # taken once
    assert queue.synthesized(UID, Path("/spool/results") / UID) is True
    assert state(queue)["state"] == "uploading"  # the same worker sends: no other worker may claim it meanwhile
    assert queue.claim(now=132.0) is None
    assert queue.done(UID, now=133.0) is True and state(queue)["state"] == "done"
    assert queue.instance_uids(UID) == {"1.2.3.0", "1.2.3.1", "1.2.3.2"}


def test_instances_that_arrive_during_synthesis_supersede_its_result(queue):
    receive(queue, 20)
    queue.complete([UID])
    queue.claim(now=101.0)
    receive(queue, 20, start=20, now=102.0)  # late: the worker holds the series
    assert state(queue)["state"] == "working"  # not disturbed while held
    assert queue.synthesized(UID, Path("/r")) is False  # superseded: not sent
    row = state(queue)
    assert row["state"] == "receiving" and row["result_dir"] == "" and row["instances"] == 40 and row["attempts"] == 0


def test_late_instances_whose_association_was_released_make_the_series_ready_again_at_once(queue):
    receive(queue, 20)
    queue.complete([UID])
    queue.claim(now=101.0)
    receive(queue, 20, start=20, now=102.0)
    assert queue.complete([UID]) == []  # held by the worker: nothing changes now
    assert queue.synthesized(UID, Path("/r")) is False and state(queue)["state"] == "ready"
    assert queue.claim(now=103.0)["instances"] == 40


def test_instances_that_arrive_while_the_result_is_sent_keep_the_series_from_done(queue):
    receive(queue, 5)
    queue.complete([UID])
    queue.claim(now=101.0)
    queue.synthesized(UID, Path("/r"))
    receive(queue, 1, start=5, now=102.0)
    assert queue.done(UID) is False and state(queue)["state"] == "receiving"


def test_a_new_instance_for_a_result_waiting_to_be_resent_discards_that_result(queue):
    receive(queue, 5)
    queue.complete([UID])
    queue.claim(now=101.0)
    queue.synthesized(UID, Path("/r"))
    assert queue.failed(UID, "destination down", retry=True, max_attempts=5, backoff_seconds=10, now=102.0) == "sending"
    receive(queue, 1, start=5, now=103.0)
    row = state(queue)
    assert row["state"] == "receiving" and row["result_dir"] == ""


def test_a_finished_series_that_gets_instances_is_received_again_from_attempt_zero(queue):
    receive(queue, 5)
    queue.complete([UID])
    queue.claim(now=101.0)
    assert queue.failed(UID, "missing slices", retry=False, max_attempts=5, backoff_seconds=10) == "failed"
    receive(queue, 1, start=5, now=200.0)
    row = state(queue)
    assert (row["state"], row["attempts"], row["error"]) == ("receiving", 0, "")


def test_an_aborted_transfer_is_failed_at_its_quiet_time_unless_a_released_resend_follows(queue, tmp_path):
    receive(queue, 10)
    queue.mark_incomplete([UID], "the association from PACS was aborted before it was released")
    ready, failed = queue.promote_quiet(30, now=130.0)
    assert ready == [] and failed == [(UID, "the association from PACS was aborted before it was released")]
    row = state(queue)
    assert row["state"] == "failed" and row["error"].startswith("incomplete: the association from PACS was aborted")
    receive(queue, 16, now=200.0)  # the PACS sends the whole series again, and releases
    assert queue.complete([UID]) == [UID] and state(queue)["incomplete"] == "" and state(queue)["instances"] == 16


def test_attempts_count_crashes_so_a_series_that_kills_the_node_is_failed_not_retried_for_ever(tmp_path):
    path = tmp_path / "q.sqlite"
    queue = SeriesQueue(path)
    receive(queue, 3)
    queue.complete([UID])
    for attempt in (1, 2):
        assert queue.claim(now=101.0 + attempt)["attempts"] == attempt
        queue.close()  # the node is OOM-killed while working
        queue = SeriesQueue(path)
        resumed, poison = queue.recover(max_attempts=3)
        assert (resumed, poison, state(queue)["state"]) == ([UID], [], "ready")
    queue.claim(now=110.0)
    queue.close()
    queue = SeriesQueue(path)
    assert queue.recover(max_attempts=3) == ([], [UID])
    row = state(queue)
    assert row["state"] == "failed" and "stopped while working on this series 3 times" in row["error"]
    assert queue.retry_failed() == 1 and state(queue)["state"] == "ready" and state(queue)["attempts"] == 0
    queue.close()


def test_a_restart_while_uploading_sends_again_without_synthesising_again(tmp_path):
    path = tmp_path / "q.sqlite"
    queue = SeriesQueue(path)
    receive(queue, 3)
    queue.complete([UID])
    queue.claim(now=101.0)
    queue.synthesized(UID, tmp_path / "result")
    queue.close()
    queue = SeriesQueue(path)
    assert queue.recover(max_attempts=5) == ([UID], [])
    row = state(queue)
    assert row["state"] == "sending" and row["result_dir"] == str(tmp_path / "result")
    assert queue.claim(now=102.0)["state"] == "uploading"
    queue.close()


def test_retries_back_off_exponentially_and_shutdown_does_not_use_up_an_attempt(queue):
    receive(queue, 3)
    queue.complete([UID])
    queue.claim(now=100.0)
    queue.put_back(UID)  # SIGTERM during synthesis: not the series' fault
    assert state(queue)["state"] == "ready" and state(queue)["attempts"] == 0
    queue.claim(now=100.0)
    assert queue.failed(UID, "RuntimeError: x", retry=True, max_attempts=3, backoff_seconds=10, now=140.0) == "ready"
    assert queue.claim(now=149.0) is None and queue.claim(now=150.0)["attempts"] == 2  # 10 s
    assert queue.failed(UID, "RuntimeError: x", retry=True, max_attempts=3, backoff_seconds=10, now=160.0) == "ready"
    assert queue.claim(now=179.0) is None and queue.claim(now=180.0)["attempts"] == 3  # then 20 s
    assert queue.failed(UID, "RuntimeError: x", retry=True, max_attempts=3, backoff_seconds=10, now=181.0) == "failed"


def test_a_corrupt_queue_database_is_named_in_one_line(tmp_path):
    path = tmp_path / "queue.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueueError, match=r"queue\.sqlite: the node's queue database cannot be used"):
        SeriesQueue(path)


def _worker(tmp_path, queue, synthesize, **config):
    from SyntheticContrastLib.node.config import NodeConfig
    from SyntheticContrastLib.node.worker import Worker

    cfg = NodeConfig(spool=tmp_path, allow=["PACS"], destination="X@127.0.0.1:1", quiet_seconds=0.01,
                     retry_backoff_seconds=0.01, **config)
    stop = threading.Event()
    worker = Worker(cfg, queue, "cpu", stop, model=object(), poll_seconds=0.02)
    worker.synthesize = synthesize
    worker.send = lambda uid, result_dir, triage: None
    worker.check_made_from = lambda uid, result_dir: None
    return worker, stop


def _wait(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("fault", [MemoryError(), OSError(28, "No space left on device")], ids=["MemoryError", "disk full"])
def test_a_worker_survives_a_series_that_fails_in_any_way_and_takes_the_next(tmp_path, queue, fault):
    def synthesize(row, triage):
        if row["series_uid"] == "1.1":
            raise fault
        queue.synthesized(row["series_uid"], tmp_path / "r")
        return tmp_path / "r"

    receive(queue, 2, uid="1.1", now=1.0)
    receive(queue, 2, uid="1.2", now=2.0)
    worker, stop = _worker(tmp_path, queue, synthesize, max_attempts=1)
    worker.start()
    try:
        assert _wait(lambda: {r["series_uid"]: r["state"] for r in queue.rows()} == {"1.1": "failed", "1.2": "done"})
    finally:
        stop.set()
        worker.join(5)
    assert worker.fatal is None
    assert state(queue, "1.1")["error"].startswith(type(fault).__name__)
    assert queue.workers()[0]["state"] == "stopped"


def test_a_worker_whose_queue_fails_stops_the_node_instead_of_listening_with_nobody_working(tmp_path, queue):
    def synthesize(row, triage):
        raise sqlite3.OperationalError("database or disk is full")

    receive(queue, 2, uid="1.1", now=1.0)
    worker, stop = _worker(tmp_path, queue, synthesize)
    worker.start()
    assert _wait(lambda: stop.is_set())  # the node's main loop ends on this, and serve returns 1
    worker.join(5)
    assert isinstance(worker.fatal, sqlite3.OperationalError)
    assert queue.workers()[0]["state"] == "dead" and "disk is full" in queue.workers()[0]["error"]


def _through_a_worker(tmp_path, card, with_localizer: bool = False, **settings):
    """One 16-slice series spooled and acknowledged, then synthesised by a real Worker; only the send is replaced (no
    destination in these tests). Returns the queue's row and the file counts sent."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    from conftest import chest_like, write_dicom_series
    from SyntheticContrastLib.engine.models import load_model
    from SyntheticContrastLib.io.dicom_export import write_dicom_file
    from SyntheticContrastLib.node.config import NodeConfig
    from SyntheticContrastLib.node.spool import series_folder
    from SyntheticContrastLib.node.worker import Worker

    spool = tmp_path / "spool"
    files = write_dicom_series(tmp_path / "src", np.round(chest_like((16, 32, 32))), spacing=(0.8, 0.8, 2.5))
    first = pydicom.dcmread(files[0])
    folder = series_folder(spool, str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    folder.mkdir(parents=True)
    queue = SeriesQueue(spool / "queue.sqlite")
    instances = [pydicom.dcmread(f) for f in files]
    if with_localizer:
        scout = pydicom.dcmread(files[0])
        scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        instances.append(scout)
    for ds in instances:
        write_dicom_file(folder / f"{ds.SOPInstanceUID}.dcm", ds)
        queue.record_instance(str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), folder, "PACS", str(ds.SOPInstanceUID), now=1.0)
    cfg = NodeConfig(spool=spool, allow=["PACS"], destination="X@127.0.0.1:1", quiet_seconds=0.01, **settings)
    stop = threading.Event()
    worker = Worker(cfg, queue, "cpu", stop, model=load_model(card), poll_seconds=0.02)
    sent = []
    worker.send = lambda uid, result_dir, triage: sent.append(len(list((result_dir / "dicom").glob("*.dcm"))))
    worker.start()
    try:
        assert _wait(lambda: queue.rows()[0]["state"] in ("done", "failed"), seconds=60)
    finally:
        stop.set()
        worker.join(10)
    row = dict(queue.rows()[0])
    queue.close()
    return row, sent


def test_a_localizer_filed_in_a_routed_series_does_not_fail_it(tmp_path, tiny_model_card):
    """The reader leaves a LOCALIZER image out of the volume on purpose; the node must count it as considered, not
    as missing."""
    row, sent = _through_a_worker(tmp_path, tiny_model_card, with_localizer=True)
    assert (row["state"], row["error"]) == ("done", "") and sent == [16] and row["instances"] == 17


def test_a_series_that_needs_more_memory_than_the_budget_is_failed_with_the_figures_before_synthesis(tmp_path, tiny_model_card):
    row, sent = _through_a_worker(tmp_path, tiny_model_card, max_memory_mib=1)
    assert row["state"] == "failed" and sent == []
    assert "of host memory at its peak, more than the 1 MiB budget (max_memory_mib), with 1 window at batch 1" in row["error"]
    assert not list((tmp_path / "spool" / "results").glob("*"))  # nothing was synthesised or written


def test_a_result_that_lacks_an_acknowledged_instance_is_never_sent(tmp_path, queue):
    import json

    receive(queue, 3)
    result = tmp_path / "result"
    result.mkdir()
    (result / "made_from.json").write_text(json.dumps(["1.2.3.0", "1.2.3.1"]))  # made before 1.2.3.2 was spooled
    worker, _ = _worker(tmp_path, queue, synthesize=None)
    del worker.check_made_from  # the real check, not the stand-in of _worker
    with pytest.raises(InputError, match=r"made before all 3 acknowledged instances were in the spool: 1 were not given "
                                         r"to the reader \(e\.g\. 1\.2\.3\.2\)"):
        worker.check_made_from(UID, result)
    (result / "made_from.json").write_text(json.dumps(["1.2.3.0", "1.2.3.1", "1.2.3.2"]))
    worker.check_made_from(UID, result)  # all of them: nothing to say


def test_retention_deletes_only_sent_series_older_than_its_hours(tmp_path, queue):
    from SyntheticContrastLib.node.config import NodeConfig
    from SyntheticContrastLib.node.service import purge_expired

    folders = {}
    for uid, state in (("1.1", "done"), ("1.2", "done"), ("1.3", "failed")):
        folders[uid] = tmp_path / "incoming" / uid
        folders[uid].mkdir(parents=True)
        (folders[uid] / "x.dcm").write_bytes(b"x")
        queue.record_instance(uid, STUDY, folders[uid], "PACS", f"{uid}.0", now=0.0)
        queue.complete([uid])
        queue.claim(now=0.0)
        if state == "done":
            queue.synthesized(uid, tmp_path / "results" / uid)
            (tmp_path / "results" / uid).mkdir(parents=True)
            queue.done(uid, now=1000.0 if uid == "1.1" else 3600 * 71)
        else:
            queue.failed(uid, "bad", retry=False, max_attempts=1, backoff_seconds=1)
    config = NodeConfig(spool=tmp_path, allow=["PACS"], destination="X@127.0.0.1:1", retention_hours=48)
    assert purge_expired(config, queue, now=3600 * 72) == ["1.1"]  # sent 71 h ago: kept; never sent: kept
    assert not folders["1.1"].exists() and not (tmp_path / "results" / "1.1").exists()
    assert folders["1.2"].exists() and folders["1.3"].exists()
    assert purge_expired(config, queue, now=3600 * 72) == []  # once
    assert purge_expired(NodeConfig(spool=tmp_path, allow=["PACS"], destination="X@127.0.0.1:1", retention_hours=0),
                         queue, now=10 ** 9) == []  # 0 keeps everything


def test_below_the_disk_watermark_an_instance_is_refused_with_0xa700_and_not_spooled(tmp_path, queue, monkeypatch):
    import shutil
    import types

    from pydicom.dataset import Dataset, FileMetaDataset

    from SyntheticContrastLib.node.config import NodeConfig
    from SyntheticContrastLib.node.receiver import Receiver

    receiver = Receiver(NodeConfig(spool=tmp_path, allow=["PACS"], destination="X@127.0.0.1:1", min_free_mib=512), queue)
    ds = Dataset()
    ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = "1.2.3.4", "1.2.3", "1.2", "CT"
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated, ds.PixelData = 16, b"\0\0"
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds.SOPClassUID = CTImageStorage
    meta = FileMetaDataset()  # as pynetdicom hands it over with the C-STORE request
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    event = types.SimpleNamespace(dataset=ds, file_meta=meta, assoc=types.SimpleNamespace(
        requestor=types.SimpleNamespace(ae_title="PACS")))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=511 * 2**20))
    assert receiver._on_store(event) == 0xA700
    assert not (tmp_path / "incoming").exists() and queue.rows() == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=513 * 2**20))
    assert receiver._on_store(event) == 0x0000 and queue.instance_uids("1.2.3") == {"1.2.3.4"}


def test_the_instance_file_and_its_folder_are_fsynced_before_the_c_store_response(tmp_path, queue, monkeypatch):
    """The README's guarantee: an acknowledged instance is on disk. An os.fsync spy names each descriptor it is given
    (through /proc) and whether the final file existed then; the sender checks the record when its response comes."""
    import os

    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from conftest import chest_like, free_port, write_dicom_series
    from SyntheticContrastLib.node import spool
    from SyntheticContrastLib.node.config import NodeConfig
    from SyntheticContrastLib.node.receiver import Receiver

    synced = []
    real_fsync = os.fsync

    def spy(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        real_fsync(fd)
        synced.append((target, sorted(p.name for p in Path(target).parent.glob("*.dcm")) if Path(target).is_file()
                       else sorted(p.name for p in Path(target).glob("*.dcm"))))

    monkeypatch.setattr(spool.os, "fsync", spy)
    port = free_port()
    (tmp_path / "spool").mkdir()  # as service.serve makes it before the receiver starts
    receiver = Receiver(NodeConfig(spool=tmp_path / "spool", allow=["PACS"], destination="X@127.0.0.1:1", port=port), queue)
    receiver.start()
    try:
        (path,) = write_dicom_series(tmp_path / "in", chest_like((1, 16, 16)))
        ds = pydicom.dcmread(path)
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHCONTRAST")
        assert assoc.is_established
        try:
            assert synced == []
            assert assoc.send_c_store(ds).Status == 0x0000
            at_response = list(synced)  # what was on disk when the sender was told "stored"
        finally:
            assoc.release()
    finally:
        receiver.stop()
    folder = tmp_path / "spool" / "incoming" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
    final = f"{ds.SOPInstanceUID}.dcm"
    assert len(at_response) == 2, at_response
    (file_target, _), (dir_target, listed) = at_response
    # First the instance's own file, written under a temporary name; then its folder, once the rename put it there.
    assert Path(file_target).parent == folder and Path(file_target).name == f".{ds.SOPInstanceUID}.partial"
    assert Path(dir_target) == folder and listed == [final]
