"""The DICOM node against a real Orthanc on loopback: a PACS sends an NCCT series, the sCECT comes back into the
same study; refused senders, malformed instances, and a kill -9 mid-transfer that loses nothing."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import chest_like, debian_file, debian_tool, free_port, write_dicom_series
from orthanc_server import DICOMWEB_PLUGIN, Orthanc

NODE_AE, SCU_AE = "SCT", "TESTSCU"


@pytest.fixture
def orthanc(tmp_path):
    debian_tool("Orthanc", "orthanc")
    node_port = free_port()
    server = Orthanc(tmp_path / "orthanc", free_port(), free_port(), {"sct": [NODE_AE, "127.0.0.1", node_port]}).start()
    server.node_port = node_port
    yield server
    server.stop()


class Node:
    """``synthetic-contrast serve`` as its own process, as a hospital would run it."""

    def __init__(self, tmp_path, orthanc, model, *extra):
        self.spool, self.port = tmp_path / "spool", orthanc.node_port
        self.args = [sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "--port", str(self.port), "--ae-title", NODE_AE,
                     "--spool", str(self.spool), "--destination", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                     "--allow", "ORTHANC", "--allow", SCU_AE, "--model", str(model), "--device", "cpu", "--quiet-seconds", "2", *extra]
        self.process = None

    def start(self) -> "Node":
        lines_before = len(self.events())
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if any(e["event"] == "listening" for e in self.events()[lines_before:]):
                return self
            assert self.process.poll() is None, f"the node exited with {self.process.returncode}"
            time.sleep(0.2)
        raise TimeoutError("the node did not start listening")

    def events(self) -> list[dict]:
        path = self.spool / "node.log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def series(tmp_path):
    return write_dicom_series(tmp_path / "ncct", np.round(chest_like((16, 32, 32))), spacing=(0.8, 0.8, 2.5), description="Thorax NCCT")


def _associate(port, ae_title=SCU_AE, bind_address=None):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    kwargs = {"bind_address": bind_address} if bind_address else {}
    return ae.associate("127.0.0.1", port, ae_title=NODE_AE, **kwargs)


def test_orthanc_sends_a_series_and_the_synthetic_series_comes_back_into_the_same_study(tmp_path, orthanc, series, tiny_model_card):
    node = Node(tmp_path, orthanc, tiny_model_card).start()
    try:
        source_id = orthanc.upload(series)
        orthanc.post("/modalities/sct/store", json_body={"Resources": [source_id], "Synchronous": True})
        result = orthanc.wait_for_series("SYNTHETIC CONTRAST", len(series), timeout=120)
    finally:
        assert node.stop() == 0  # SIGTERM: a clean shutdown
    source = orthanc.get(f"/series/{source_id}")
    assert result["ParentStudy"] == source["ParentStudy"]
    positions = {}
    for iid in source["Instances"]:
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        positions[tags["ImagePositionPatient"]] = tags
    for iid in result["Instances"]:
        tags = orthanc.get(f"/instances/{iid}/simplified-tags")
        assert tags["ImagePositionPatient"] in {p for p in positions} or any(
            np.allclose(np.array(tags["ImagePositionPatient"].split("\\"), float), np.array(p.split("\\"), float), atol=1e-4) for p in positions)
        assert tags["ImageOrientationPatient"].split("\\")[:2] == ["1.000000", "0.000000"]
        assert tags["ImageType"].startswith("DERIVED\\SECONDARY") and "SYNTHETIC IMAGE" in tags["ImageComments"]
        assert "contrast was not administered" in tags["DerivationDescription"]
        assert tags["FrameOfReferenceUID"] == next(iter(positions.values()))["FrameOfReferenceUID"]
    events = [e["event"] for e in node.events()]
    assert events.index("series_complete") < events.index("synthesized") < events.index("sent") < events.index("done")
    assert events[-1] == "stopped"
    status = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "status", "--spool", str(node.spool)],
                            capture_output=True, text=True, check=True)
    report = json.loads(status.stdout)
    assert report["counts"] == {"done": 1} and report["done_last_hour"] == 1 and report["median_latency_s"] is not None


def test_a_refused_ae_title_or_host_and_a_malformed_instance_leave_the_node_serving(tmp_path, orthanc, series, tiny_model_card):
    node = Node(tmp_path, orthanc, tiny_model_card, "--allow-host", "127.0.0.1").start()
    try:
        intruder = _associate(node.port, ae_title="INTRUDER")
        assert not intruder.is_established
        elsewhere = _associate(node.port, bind_address=("127.0.0.2", 0))  # an allowed AE title from another host
        assert not elsewhere.is_established
        assoc = _associate(node.port)
        assert assoc.is_established
        broken = pydicom.dcmread(series[0])
        del broken.PixelData
        broken.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(broken).Status == 0xA900
        assert assoc.send_c_store(pydicom.dcmread(series[1])).Status == 0x0000  # still serving
        assert assoc.send_c_echo().Status == 0x0000
        # A spool that cannot take the instance (here a file stands where its study folder belongs): refused, not acknowledged.
        other = pydicom.dcmread(series[2])
        other.StudyInstanceUID = generate_uid()
        (node.spool / "incoming" / other.StudyInstanceUID).write_text("in the way")
        assert assoc.send_c_store(other).Status == 0xA700
        assoc.release()
    finally:
        assert node.stop() == 0
    events = node.events()
    refused = [e for e in events if e["event"] == "refused"]
    assert {e["reason"] for e in refused} == {"calling AE title not allowed", "host not allowed"}
    assert any(e["calling_ae"] == "INTRUDER" for e in refused)
    (rejected,) = [e for e in events if e["event"] == "rejected"]
    assert rejected["reason"] == "instance lacks PixelData" and rejected["calling_ae"] == SCU_AE
    assert any(e["event"] == "spool_error" for e in events)
    assert (node.spool / "incoming").exists() and len(list((node.spool / "incoming").glob("*/*/*.dcm"))) == 1


def test_a_kill_9_during_a_transfer_loses_no_acknowledged_instance(tmp_path, orthanc, series, tiny_model_card):
    node = Node(tmp_path, orthanc, tiny_model_card).start()
    assoc = _associate(node.port)
    acknowledged = []
    for path in series[:9]:
        ds = pydicom.dcmread(path)
        if assoc.send_c_store(ds).Status == 0x0000:
            acknowledged.append(str(ds.SOPInstanceUID))
    node.kill()  # mid-association: no release, no clean shutdown
    assert len(acknowledged) == 9
    spooled = {pydicom.dcmread(p).SOPInstanceUID for p in (node.spool / "incoming").glob("*/*/*.dcm")}
    assert set(acknowledged) <= spooled  # every acknowledged instance is on disk, whole and readable
    node = Node(tmp_path, orthanc, tiny_model_card).start()
    try:
        assoc = _associate(node.port)
        for path in series[9:]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        assoc.release()
        result = orthanc.wait_for_series("SYNTHETIC CONTRAST", len(series), timeout=120)
    finally:
        assert node.stop() == 0
    assert len(result["Instances"]) == len(series)  # the 9 from before the kill are in the synthetic series


def test_the_result_can_go_by_stow_rs_to_a_dicomweb_server(tmp_path, series, tiny_model_card):
    debian_tool("Orthanc", "orthanc")
    debian_file(DICOMWEB_PLUGIN, "orthanc-dicomweb")
    server = Orthanc(tmp_path / "orthanc", free_port(), free_port(), {}, dicomweb=True).start()
    try:
        server.node_port = free_port()
        node = Node(tmp_path, server, tiny_model_card)
        at = node.args.index("--destination")
        node.args[at:at + 2] = ["--stow-url", f"{server.url}/dicom-web"]
        node.start()
        try:
            assoc = _associate(node.port)
            for path in series:
                assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
            assoc.release()
            result = server.wait_for_series("SYNTHETIC CONTRAST", len(series), timeout=120)
        finally:
            assert node.stop() == 0
        study = server.get(f"/studies/{result['ParentStudy']}")
        assert study["MainDicomTags"]["StudyInstanceUID"] == pydicom.dcmread(series[0]).StudyInstanceUID
        assert any(e["event"] == "sent" and e["stow_url"].endswith("/dicom-web") for e in node.events())
    finally:
        server.stop()


def test_the_queue_retries_with_backoff_resumes_after_a_restart_and_keeps_failures(tmp_path):
    from SyntheticContrastLib.node.queue import SeriesQueue

    queue = SeriesQueue(tmp_path / "q.sqlite")
    for t in (100.0, 101.0):
        queue.record_instance("1.2.3", "1.2", tmp_path / "s", "PACS", now=t)
    assert queue.promote_quiet(30, now=130.0) == [] and queue.promote_quiet(30, now=131.0) == ["1.2.3"]
    assert queue.claim(now=131.0)["state"] == "ready" and queue.claim(now=131.0) is None  # taken once
    assert queue.failed("1.2.3", "destination down", retry=True, max_attempts=3, backoff_seconds=10, now=140.0) == "ready"
    assert queue.claim(now=149.0) is None and queue.claim(now=150.0) is not None  # backoff 10 s, then 20 s
    queue.synthesized("1.2.3", tmp_path / "result")
    assert queue.claim(now=151.0)["state"] == "sending"
    queue.close()
    queue = SeriesQueue(tmp_path / "q.sqlite")  # a restart while uploading: sent again, not synthesised again
    assert queue.recover() == ["1.2.3"] and queue.rows()[0]["state"] == "sending"
    queue.claim(now=152.0)
    assert queue.failed("1.2.3", "refused", retry=True, max_attempts=3, backoff_seconds=10, now=153.0) == "sending"
    queue.claim(now=200.0)
    assert queue.failed("1.2.3", "refused again", retry=True, max_attempts=3, backoff_seconds=10, now=201.0) == "failed"
    assert queue.retry_failed() == 1 and queue.rows()[0]["state"] == "sending" and queue.rows()[0]["attempts"] == 0
    queue.record_instance("1.2.3", "1.2", tmp_path / "s", "PACS", now=300.0)  # sent again by the PACS while queued
    assert queue.rows()[0]["state"] == "sending"


def test_settings_are_checked_before_the_node_starts_and_uids_cannot_leave_the_spool(tmp_path):
    from pydicom.dataset import Dataset

    from SyntheticContrastLib.errors import InputError
    from SyntheticContrastLib.node.config import load_config
    from SyntheticContrastLib.node.spool import check_instance

    config = tmp_path / "node.toml"
    config.write_text('port = 4242\nallow = ["PACS"]\ndestination = "PACS@10.0.0.5:104"\nspool = "/var/spool/sct"\n')
    loaded = load_config(config, {"port": 11112})
    assert loaded.port == 11112 and loaded.destination_parts() == ("PACS", "10.0.0.5", 104) and loaded.spool == Path("/var/spool/sct")
    config.write_text('allow = ["PACS"]\ndestination = "PACS@10.0.0.5:104"\nquiet_secs = 3\n')
    with pytest.raises(InputError, match="unknown setting.*quiet_secs"):
        load_config(config, {})
    with pytest.raises(InputError, match="no calling AE title is allowed.*destination 'PACS:104' is not AE@HOST:PORT|destination 'PACS:104' is not AE@HOST:PORT.*no calling"):
        load_config(None, {"destination": "PACS:104"})
    ds = Dataset()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom warns; the node must refuse
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = "1.2.3", "../../etc", "1.2"
    ds.Modality, ds.Rows, ds.Columns, ds.PixelData = "CT", 1, 1, b"\0\0"
    with pytest.raises(InputError, match="SeriesInstanceUID '../../etc' is not a DICOM UID"):
        check_instance(ds)


def test_with_tls_the_node_speaks_only_tls(tmp_path, orthanc, series, tiny_model_card):
    import ssl

    openssl = debian_tool("openssl", "openssl")
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    config = tmp_path / "node.toml"
    config.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    node = Node(tmp_path, orthanc, tiny_model_card, "--config", str(config)).start()
    try:
        assert not _associate(node.port).is_established  # plain DICOM is not answered
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        context.check_hostname = False
        ae = AE(ae_title=SCU_AE)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE, tls_args=(context, None))
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(series[0])).Status == 0x0000
        assoc.release()
    finally:
        assert node.stop() == 0
    assert any(e["event"] == "listening" and e["tls"] is True for e in node.events())
