"""Cost of the uncertainty map: wall time and peak memory of synthesis with N samples, each N in a fresh process.

Goals (issue: know when not to trust it): peak RSS at N=8 at most 1.2x that at N=1, and time linear in N.

    python benchmarks/uncertainty.py --samples 1 2 4 8 --slices 48 --json out.json

The input is a held-out phantom NCCT (512 x 512 in-plane), saved once as .npy so that each child process only
loads it; peak RSS is the child's own maximum resident set (getrusage), which includes torch and the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SyntheticContrast"))

from _results import report  # noqa: E402

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {lib!r})
import numpy as np, torch
torch.set_num_threads({threads})
from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume_with_uncertainty
from SyntheticContrastLib.engine.models import load_model
from SyntheticContrastLib.io.volume import Volume
volume = Volume(np.load({array!r}), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0))
model = load_model({model!r}, device="cpu")
t0 = time.perf_counter()
result, sd, report = synthesize_volume_with_uncertainty(volume, model, SynthesisOptions(device="cpu", samples={samples}))
seconds = time.perf_counter() - t0
print(json.dumps({{"samples": {samples}, "seconds": seconds, "windows_per_sample": report.windows,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "sd_mean_hu": float(sd.array.mean()) if sd is not None else None}}))
"""


def main() -> int:
    from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_CARD)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        array = Path(tmp) / "ncct.npy"
        np.save(array, make_phantom(9001, PhantomSpec(slices=args.slices)).ncct.array)
        runs = []
        for n in args.samples:
            code = CHILD.format(lib=str(ROOT / "SyntheticContrast"), threads=args.threads, array=str(array), model=str(args.model), samples=n)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"N={n} failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"N={n:2d}: {runs[-1]['seconds']:8.1f} s ({runs[-1]['seconds'] / n:6.1f} s per sample), "
                  f"peak RSS {runs[-1]['peak_rss_mib']:7.0f} MiB", flush=True)
    ns = np.array([r["samples"] for r in runs], float)
    ts = np.array([r["seconds"] for r in runs])
    slope, intercept = np.polyfit(ns, ts, 1)
    fitted = slope * ns + intercept
    r2 = 1 - np.sum((ts - fitted) ** 2) / np.sum((ts - ts.mean()) ** 2) if len(runs) > 2 else float("nan")
    rss = {r["samples"]: r["peak_rss_mib"] for r in runs}
    summary = {"slices": args.slices, "model": str(args.model), "threads": args.threads,
               "time_fit": {"seconds_per_sample": slope, "intercept_s": intercept, "r2": r2},
               "rss_ratio_max_over_1": max(rss.values()) / rss[min(rss)] if min(rss) == 1 else None}
    return report(runs, summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
