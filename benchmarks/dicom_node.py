"""Throughput and latency of the DICOM node with the demo model: Orthanc (the Debian package, on loopback) sends
phantom NCCT series to ``synthetic-contrast serve`` through its REST API, and the sCECT series come back to it.

Latency is from the end of Orthanc's C-STORE of a series (its last instance received by the node) to the synthetic
series being complete in Orthanc, so a series that waits behind others in the one-worker queue counts its wait;
throughput is series per minute over the whole run.

    python benchmarks/dicom_node.py --series 3 --slices 32 --json benchmarks/results_dicom_node_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "SyntheticContrast")]

from _results import report  # noqa: E402
from conftest import free_port, write_dicom_series  # noqa: E402
from orthanc_server import Orthanc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--slices", type=int, default=32, help="slices per phantom series (512 x 512, 2.5 mm)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    work = Path(tempfile.mkdtemp(prefix="sct-node-bench-"))
    node_port = free_port()
    orthanc = Orthanc(work / "orthanc", free_port(), free_port(), {"sct": ["SCT", "127.0.0.1", node_port]}).start()
    node = None
    try:
        uploads = []
        for k in range(args.series):
            case = make_phantom(9001 + k, PhantomSpec(slices=args.slices))
            files = write_dicom_series(work / f"ncct{k}", case.ncct.array, spacing=case.ncct.spacing, description=f"bench {k}")
            uploads.append(orthanc.upload(files))
        node = subprocess.Popen([sys.executable, "-m", "SyntheticContrastLib.cli", "serve", "--port", str(node_port), "--ae-title", "SCT",
                                 "--spool", str(work / "spool"), "--destination", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                                 "--allow", "ORTHANC", "--device", args.device], stderr=subprocess.DEVNULL)
        log = work / "spool" / "node.log.jsonl"
        while not (log.exists() and "listening" in log.read_text()):
            time.sleep(0.2)
        sent_at, stored_at = {}, {}
        start = time.time()

        def send_all():
            for k, sid in enumerate(uploads):
                orthanc.post("/modalities/sct/store", json_body={"Resources": [sid], "Synchronous": True})
                sent_at[f"bench {k}"] = time.time()

        sender = threading.Thread(target=send_all)
        sender.start()
        while len(stored_at) < args.series:
            for info in orthanc.series_with_description("SYNTHETIC CONTRAST - bench"):
                name = info["MainDicomTags"]["SeriesDescription"].removeprefix("SYNTHETIC CONTRAST - ")
                if len(info["Instances"]) == args.slices and name not in stored_at:
                    stored_at[name] = time.time()
            time.sleep(0.25)
        sender.join()
        elapsed = max(stored_at.values()) - start
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=120)
        events = [json.loads(line) for line in log.read_text().splitlines()]
        synthesis = [e["seconds"] for e in events if e["event"] == "synthesized"]
        runs = [{"series": name, "latency_s": round(stored_at[name] - sent_at[name], 2)} for name in sorted(stored_at)]
        summary = {
            "machine": "this CPU (see note)", "device": args.device, "model": "bundled demo model", "series": args.series,
            "slices": args.slices, "matrix": "512 x 512", "wall_s": round(elapsed, 1),
            "series_per_minute": round(args.series / elapsed * 60, 2),
            "latency_s_median": round(statistics.median(r["latency_s"] for r in runs), 2),
            "latency_s_max": round(max(r["latency_s"] for r in runs), 2),
            "synthesis_s_median": round(statistics.median(synthesis), 2),
        }
        return report(runs, summary, args.json)
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
