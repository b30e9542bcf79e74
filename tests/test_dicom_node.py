"""The DICOM node against a real Orthanc on loopback: a PACS sends an NCCT series, the sCECT comes back into the
same study; refused senders, malformed instances, and a kill -9 mid-transfer that loses nothing."""

import io
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
    """``synthetic-contrast serve`` as its own process, as a hospital would run it. ``readme_flags_only`` gives exactly
    the flags of the README's example (no --model, --device or --quiet-seconds), so the defaults are what runs."""

    def __init__(self, tmp_path, orthanc, model, *extra, readme_flags_only=False):
        self.spool, self.port = tmp_path / "spool", orthanc.node_port
        self.args = [sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "--port", str(self.port), "--ae-title", NODE_AE,
                     "--spool", str(self.spool), "--destination", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                     "--allow", "ORTHANC", "--allow", SCU_AE]
        if not readme_flags_only:
            self.args += ["--model", str(model), "--device", "cpu", "--quiet-seconds", "2"]
        self.args += list(extra)
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
        # Orthanc's simplified tags show strings over 256 characters as null: the findings make ImageComments longer.
        comments = orthanc.get_bytes(f"/instances/{iid}/content/0020-4000").decode("latin-1")
        assert tags["ImageType"].startswith("DERIVED\\SECONDARY") and "SYNTHETIC IMAGE" in comments
        assert "contrast was not administered" in tags["DerivationDescription"]
        assert tags["FrameOfReferenceUID"] == next(iter(positions.values()))["FrameOfReferenceUID"]
        sent = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{iid}/file")))
        texts = [str(e.value) for e in sent.iterall() if e.VR not in ("OB", "OW", "OF", "SQ", "UN")]
        assert not [t for t in texts if str(tmp_path) in t or "/tmp/" in t or "spool" in t]  # no local path reaches a peer
    events = [e["event"] for e in node.events()]
    assert events.index("series_complete") < events.index("synthesized") < events.index("sent") < events.index("done")
    assert events[-1] == "stopped"
    status = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "status", "--spool", str(node.spool), "--json"],
                            capture_output=True, text=True, check=True)
    report = json.loads(status.stdout)
    assert report["counts"] == {"done": 1} and report["done_last_hour"] == 1 and report["median_latency_s"] is not None
    (worker,) = report["workers"]
    assert worker["device"] == "cpu" and worker["state"] == "stopped" and not worker["answering"]
    table = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "status", "--spool", str(node.spool)],
                           capture_output=True, text=True, check=True).stdout
    assert table.startswith("queue: done 1 (0 open)\n") and "worker worker-0-cpu (cpu, pid " in table


def test_serve_with_only_the_readmes_flags_sends_the_series_back(tmp_path, orthanc, series):
    """The README's command as a new user types it: the default device ('auto') and the bundled model. It used to fail
    every series ('device string: auto') and retry for ever."""
    node = Node(tmp_path, orthanc, None, readme_flags_only=True).start()
    try:
        source_id = orthanc.upload(series)
        orthanc.post("/modalities/sct/store", json_body={"Resources": [source_id], "Synchronous": True})
        result = orthanc.wait_for_series("SYNTHETIC CONTRAST", len(series), timeout=180)
    finally:
        assert node.stop() == 0
    assert len(result["Instances"]) == len(series)
    events = node.events()
    assert not [e for e in events if e["event"] == "failed"]
    (ready,) = [e for e in events if e["event"] == "worker_ready"]
    assert ready["device_asked"] == "auto" and ready["device"] == "cpu"  # this machine has no GPU: auto is the CPU


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


def _send(port, paths, release=True) -> list[str]:
    assoc = _associate(port)
    assert assoc.is_established
    acknowledged = []
    for path in paths:
        ds = pydicom.dcmread(path)
        assert assoc.send_c_store(ds).Status == 0x0000
        acknowledged.append(str(ds.SOPInstanceUID))
    assoc.release() if release else assoc.abort()
    return acknowledged


def _synthetic_series_sources(orthanc) -> list[set[str]]:
    """For every synthetic series in Orthanc: the source SOP Instance UIDs its instances were derived from."""
    found = []
    for info in orthanc.series_with_description("SYNTHETIC CONTRAST"):
        sources = set()
        for iid in info["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{iid}/file")))
            sources |= {str(item.ReferencedSOPInstanceUID) for item in ds.SourceImageSequence}
        found.append(sources)
    return found


def test_instances_that_arrive_during_synthesis_are_in_the_series_sent_back(tmp_path, orthanc, tiny_model_card):
    """20 of 40 instances arrive while the first 20 are being synthesised. The node used to send the 20-slice result
    and mark the series done; now that result is superseded and the series sent back holds all 40."""
    series = write_dicom_series(tmp_path / "ncct40", np.round(chest_like((40, 128, 128))), spacing=(0.8, 0.8, 2.5),
                                description="Thorax NCCT")
    node = Node(tmp_path, orthanc, tiny_model_card, "--samples", "4").start()
    try:
        acknowledged = _send(node.port, series[:20])
        deadline = time.time() + 60
        while not any(e["event"] == "synthesis_started" for e in node.events()):
            assert time.time() < deadline, "synthesis never started"
            time.sleep(0.05)
        acknowledged += _send(node.port, series[20:])
        deadline = time.time() + 240
        while not any(e["event"] == "done" for e in node.events()):
            assert time.time() < deadline, "the series was never done"
            time.sleep(0.5)
    finally:
        assert node.stop() == 0
    events = node.events()
    late = [e for e in events if e["event"] == "reopened"]
    assert late and "during the synthesis" in late[0]["reason"]  # the path this test is about was taken
    (done,) = [e for e in events if e["event"] == "done"]
    assert done["instances"] == 40
    assert _synthetic_series_sources(orthanc) == [set(acknowledged)]  # one series back, made of every acknowledged instance


def test_an_aborted_transfer_is_not_sent_short_and_a_resend_is_sent_whole(tmp_path, orthanc, series, tiny_model_card):
    node = Node(tmp_path, orthanc, tiny_model_card).start()
    try:
        _send(node.port, series[:9], release=False)  # the sender aborts: what came may be only part of the series
        deadline = time.time() + 30
        while not any(e["event"] == "failed" for e in node.events()):
            assert time.time() < deadline, "the incomplete series was neither failed nor held with a reason"
            time.sleep(0.2)
        assert orthanc.series_with_description("SYNTHETIC CONTRAST") == []  # nothing short was sent
        acknowledged = _send(node.port, series)
        orthanc.wait_for_series("SYNTHETIC CONTRAST", len(series), timeout=120)
    finally:
        assert node.stop() == 0
    (failed,) = [e for e in node.events() if e["event"] == "failed"]
    assert "incomplete" in failed["error"] and "aborted" in failed["error"]
    assert _synthetic_series_sources(orthanc) == [set(acknowledged)]


def test_with_send_incomplete_an_aborted_transfer_comes_back_marked_incomplete_in_every_instance(tmp_path, orthanc, series,
                                                                                                tiny_model_card):
    node = _node_with_settings(tmp_path, orthanc, tiny_model_card, "send_incomplete = true\n").start()
    try:
        acknowledged = _send(node.port, series[:9], release=False)
        result = orthanc.wait_for_series("SYNTHETIC CONTRAST", 9, timeout=120)
    finally:
        assert node.stop() == 0
    assert _synthetic_series_sources(orthanc) == [set(acknowledged)]
    for iid in result["Instances"]:
        comments = orthanc.get_bytes(f"/instances/{iid}/content/0020-4000").decode("latin-1")
        assert "INCOMPLETE INPUT SERIES WARNING: the association from TESTSCU was aborted" in comments
    assert [e["event"] for e in node.events()].count("incomplete_sent") == 1


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


def test_typed_settings_refuse_a_string_where_a_list_of_ae_titles_belongs(tmp_path):
    from SyntheticContrastLib.errors import InputError
    from SyntheticContrastLib.node.config import load_config

    config = tmp_path / "node.toml"
    config.write_text('allow = "PACS"\ndestination = "PACS@10.0.0.5:104"\n')  # would be the AE titles P, A, C and S
    with pytest.raises(InputError, match=r'node\.toml: allow must be a list of strings, like allow = \["PACS"\], not \'PACS\''):
        load_config(config, {})
    config.write_text('allow = ["PACS", "BAD\\\\AE"]\ndestination = "PACS@10.0.0.5:104"\nport = "104"\n')
    with pytest.raises(InputError, match=r"port must be a whole number, not '104'"):
        load_config(config, {})
    config.write_text('allow = ["PACS", "BAD\\\\AE", "SEVENTEEN_LETTERS"]\ndestination = "PACS@10.0.0.5:104"\n')
    with pytest.raises(InputError, match=r"allow: 'BAD\\\\AE', 'SEVENTEEN_LETTERS' not AE title"):
        load_config(config, {})
    config.write_text('allow = ["PACS"]\ndestination = "PACS@10.0.0.5:104"\n')
    loaded = load_config(config, {})
    assert loaded.allow == ["PACS"] and loaded.bind_address() == "127.0.0.1"  # loopback unless hosts are named
    assert load_config(config, {"allow_hosts": ["10.0.0.5"]}).bind_address() == "0.0.0.0"


@pytest.mark.parametrize("flags, message", [
    (["--model", "no-such-model"], "no-such-model"),
    (["--device", "cda"], "device 'cda' is not a device"),
    (["--destination", "PACS@127.0.0.1:1"], "PACS@127.0.0.1:1 refused or did not answer"),
], ids=["model", "device", "destination"])
def test_the_node_refuses_to_start_on_what_would_fail_every_series(tmp_path, flags, message):
    args = [sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "--port", str(free_port()), "--spool", str(tmp_path / "spool"),
            "--destination", "PACS@127.0.0.1:1", "--allow", "PACS"] + flags
    if "--destination" not in flags:
        args += ["--stow-url", "http://127.0.0.1:1/dicom-web"]  # a destination that is not C-ECHOed
        args[args.index("--destination"):args.index("--destination") + 2] = []
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "spool" / "node.log.jsonl").exists() or "listening" not in (tmp_path / "spool" / "node.log.jsonl").read_text()


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


def _node_with_settings(tmp_path, orthanc, model, settings: str, *extra) -> Node:
    """A node with TOML settings that have no flag."""
    config = tmp_path / "node.toml"
    config.write_text(settings)
    return Node(tmp_path, orthanc, model, "--config", str(config), *extra)


def test_the_association_limit_is_logged_as_such_and_sigterm_lets_an_open_association_finish(tmp_path, orthanc, series,
                                                                                              tiny_model_card):
    node = _node_with_settings(tmp_path, orthanc, tiny_model_card, "max_associations = 1\nshutdown_grace_seconds = 30\n",
                                "--quiet-seconds", "600").start()
    first = _associate(node.port)
    assert first.is_established
    over = _associate(node.port)
    assert not over.is_established  # one more than the limit
    for path in series[:3]:
        assert first.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    node.process.send_signal(signal.SIGTERM)
    time.sleep(2.0)  # the node has begun to stop: it refuses new associations and lets the open one finish
    assert node.process.poll() is None
    late = _associate(node.port)
    assert not late.is_established
    for path in series[3:6]:
        assert first.send_c_store(pydicom.dcmread(path)).Status == 0x0000  # acknowledged during the grace time
    first.release()
    assert node.process.wait(timeout=30) == 0
    reasons = [e["reason"] for e in node.events() if e["event"] == "refused"]
    assert reasons == ["association limit reached (max_associations = 1)", "the node is shutting down"]
    spooled = {pydicom.dcmread(p).SOPInstanceUID for p in (node.spool / "incoming").glob("*/*/*.dcm")}
    assert spooled == {pydicom.dcmread(p).SOPInstanceUID for p in series[:6]}
    assert not [e for e in node.events() if e["event"] == "associations_closed"]  # none had to be cut off


def test_a_node_whose_queue_breaks_while_it_runs_exits_non_zero_instead_of_listening_with_no_worker(tmp_path, orthanc,
                                                                                                     tiny_model_card):
    node = Node(tmp_path, orthanc, tiny_model_card).start()
    for part in ("queue.sqlite", "queue.sqlite-wal", "queue.sqlite-shm"):  # a disk fault under the running node
        path = node.spool / part
        if path.exists():
            with open(path, "r+b") as fh:
                fh.write(b"\0" * min(path.stat().st_size, 32768))
    assert node.process.wait(timeout=60) == 1
    (dead,) = [e for e in node.events() if e["event"] == "worker_dead"]
    assert "DatabaseError" in dead["error"] or "not a database" in dead["error"]
