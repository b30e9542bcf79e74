"""How long Cancel takes in the Slicer panel: a real out-of-process run of the demo model, cancelled mid-network.

Runs the module's own Logic on slicer-core's MRML with the test harness's stand-ins for Qt and ``slicer.app``
(tests/slicer_harness.py). Each run: start the child, let the module's timer follow it until the child has
reported ``--after`` windows, press Cancel, and time until Cancel returns with the process tree gone.

    python benchmarks/slicer_cancel.py --runs 5 --after 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "SyntheticContrast")]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import slicer_harness  # noqa: E402
from _results import report  # noqa: E402


def one_run(after: int, slices: int) -> dict:
    from SyntheticContrastLib import mrml
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    with slicer_harness.installed() as harness:
        module = slicer_harness.import_module_fresh()
        logic = module.SyntheticContrastLogic()
        p = logic.getParameterNode()
        p.inputVolume = mrml.node_from_volume(harness.scene, make_phantom(9001, PhantomSpec(slices=slices)).ncct, "phantom")
        p.device = "cpu"
        events, finished = [], []
        started = time.monotonic()
        job = logic.startSynthesis(p, events.append, lambda result, node: finished.append(result))
        pid = logic.synthesis.runner._popen.pid
        while sum(e["event"] == "progress" for e in events) < after:
            for timer in slicer_harness.QTimer.instances:
                timer.fire()
            time.sleep(0.02)
            if finished:
                raise RuntimeError(f"the run ended before it could be cancelled: {finished[0].message}")
        running_s = time.monotonic() - started
        t0 = time.monotonic()
        result = logic.cancelSynthesis()
        cancel_s = time.monotonic() - t0
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        windows = events[-1]
        return {"cancel_s": cancel_s, "child_alive_after": alive, "state": result.state, "workdir_left": job.workdir.exists(),
                "ran_s_before_cancel": running_s, "windows_done": windows["windows_done"], "windows_total": windows["windows_total"],
                "synthetic_nodes_left": sum("synthetic" in n.GetName() for n in slicer_harness.slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", harness.scene))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--after", type=int, default=1, help="cancel once the child has reported this many windows")
    parser.add_argument("--slices", type=int, default=48, help="phantom slices (512 x 512 in-plane)")
    parser.add_argument("--json", type=Path, help="also write the runs and the summary here")
    args = parser.parse_args()
    runs = [one_run(args.after, args.slices) for _ in range(args.runs)]
    times = [r["cancel_s"] for r in runs]
    summary = {"runs": len(runs), "cancel_s_median": statistics.median(times), "cancel_s_max": max(times),
               "all_children_gone": not any(r["child_alive_after"] for r in runs),
               "nothing_left": not any(r["workdir_left"] or r["synthetic_nodes_left"] for r in runs)}
    for r in runs:
        print(f"cancel {r['cancel_s'] * 1000:7.1f} ms after {r['ran_s_before_cancel']:5.1f} s "
              f"(window {r['windows_done']}/{r['windows_total']}); state {r['state']}; child alive: {r['child_alive_after']}")
    return report(runs, summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
