"""The planner's estimate (engine/planner.py) against what a run really took: peak RSS of a `synthesize` process on
the CPU, and its time, at several volume sizes.

Goal (issue: ready for the first GPU): on the CPU the estimated peak is within 25 % of the measured peak RSS at 48,
150 and 300 slices, both the estimate the run makes of itself (the `plan` event) and the one made before any reading
(the Slicer panel's and the node's, `plan_card` about a fresh process).

    python benchmarks/planner.py --slices 48,150,300 --json benchmarks/results_planner_cpu_2core.json

Each size is a held-out phantom NCCT (seed 9001, 512 x 512 in-plane) written to a temporary folder, then synthesised
by the README's command with the bundled demo model and its defaults, in a fresh child process that prints its own
high-water mark (VmHWM) when it ends.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SyntheticContrast"))

from _results import report  # noqa: E402

CHILD = """
import json, sys
sys.path.insert(0, {lib!r})
from SyntheticContrastLib.cli import main
code = main(sys.argv[1:])
from SyntheticContrastLib.engine import host_memory
print(json.dumps({{"event": "peak_rss", "bytes": host_memory.peak_resident_bytes(), "code": code}}), flush=True)
"""


def measure(slices: int, folder: Path, size: int = 512, device: str = "cpu") -> dict:
    from SyntheticContrastLib.engine import host_memory, planner
    from SyntheticContrastLib.engine.bundled import DEFAULT_MODEL_CARD
    from SyntheticContrastLib.engine.cards import read_card
    from SyntheticContrastLib.io.reading import write_volume
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    source = folder / f"ct{slices}_ncct.nii.gz"
    write_volume(make_phantom(9001, PhantomSpec(size=size, slices=slices)).ncct, source)
    before = planner.plan_card(read_card(DEFAULT_MODEL_CARD), (slices, size, size),
                               planner.DeviceFacts(free_bytes=host_memory.available_bytes()), volume_in_memory=False)
    command = [sys.executable, "-c", CHILD.format(lib=str(ROOT / "SyntheticContrast")), "synthesize", str(source),
               str(folder / f"ct{slices}_synthetic.nii.gz"), "--progress-json", "--device", device]
    start = time.perf_counter()
    events = []  # (seconds since start, event): the plan's time estimate is checked against plan -> last window
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as child:
        for line in child.stdout:
            if line.startswith("{"):
                events.append((time.perf_counter() - start, json.loads(line)))
    if child.returncode != 0:
        raise RuntimeError(f"synthesize of {slices} slices exited {child.returncode}")
    wall = time.perf_counter() - start
    planned_at, plan = next((t, e) for t, e in events if e["event"] == "plan")
    last_window = [t for t, e in events if e["event"] == "progress"][-1]
    peak = next(e for _, e in events if e["event"] == "peak_rss")["bytes"]
    done = next(e for _, e in events if e["event"] == "done")
    mib = 2 ** 20
    device_rows = {}
    if plan["device"] != "cpu":  # on a GPU the device's own peak is judged too, against max_memory_allocated
        device_rows = {"measured_device_peak_mib": done["peak_device_mib"],
                       "estimate_device_mib": round(plan["peak_bytes"] / mib, 1),
                       "estimate_device_error": round(plan["peak_bytes"] / mib / done["peak_device_mib"] - 1, 4)}
    return {
        "slices": slices, "windows": plan["windows"], "measured_peak_mib": round(peak / mib, 1),
        "estimate_in_run_mib": round(plan["host_peak_bytes"] / mib, 1),
        "estimate_in_run_error": round(plan["host_peak_bytes"] / peak - 1, 4),
        "estimate_before_read_mib": round(before.host_peak_bytes / mib, 1),
        "estimate_before_read_error": round(before.host_peak_bytes / peak - 1, 4),
        "estimated_synthesis_s": round(plan["seconds"], 1),
        "synthesis_s": round(last_window - planned_at, 1),
        "wall_s": round(wall, 1), "line": plan["line"], **device_rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", default="48,150,300")
    parser.add_argument("--size", type=int, default=512, help="in-plane pixels (default 512)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for slices in (int(s) for s in args.slices.split(",")):
            runs.append(measure(slices, Path(tmp), args.size, args.device))
            print(json.dumps(runs[-1]), flush=True)
    worst = max(max(abs(r[k]) for k in r if k.endswith("_error")) for r in runs)
    summary = {"goal": "|estimate / measured peak - 1| <= 0.25 at every size (host RSS; on a GPU also max_memory_allocated)",
               "worst_error": worst, "met": worst <= 0.25, "runs": runs}
    report(runs, summary, args.json)
    return 0 if summary["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
