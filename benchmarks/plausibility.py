"""Cost of the output's plausibility check (trust/plausibility.py) beside the synthesis it judges.

Goal (issue: check the output): the check adds under 5 % to the synthesis time of a 300-slice volume on the
workplace's 2-core CPU.

    python benchmarks/plausibility.py --slices 300 --json benchmarks/results_plausibility_cpu_2core.json

The input is a held-out phantom NCCT (512 x 512 in-plane, seed 9001) on the bundled demo model's default settings;
the check is timed --repeats times on that one output, and its per-class findings are kept with the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SyntheticContrast"))

from _results import report  # noqa: E402


def main() -> int:
    import torch

    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
    from SyntheticContrastLib.engine.models import DEFAULT_MODEL_CARD, load_model
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom
    from SyntheticContrastLib.trust import plausibility

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_CARD)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    ncct = make_phantom(9001, PhantomSpec(slices=args.slices)).ncct
    t0 = time.perf_counter()
    scect, synthesis = synthesize_volume(ncct, model, SynthesisOptions(device="cpu"))
    synthesis_s = time.perf_counter() - t0
    statistics = model.card.enhancement_statistics
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        measured = plausibility.measure(ncct, scect, model.card.encoding.output_range_hu, statistics)
        found = plausibility.check(measured, statistics)
        runs.append({"check_s": time.perf_counter() - t0, "findings": [f.message for f in found]})
    check_s = min(r["check_s"] for r in runs)
    summary = {"slices": args.slices, "shape": list(ncct.array.shape), "threads": args.threads, "synthesis_s": round(synthesis_s, 2),
               "windows": synthesis.windows, "check_s_best": round(check_s, 3),
               "check_s_all": [round(r["check_s"], 3) for r in runs],
               "check_share_of_synthesis": round(check_s / synthesis_s, 4), "goal": "< 0.05",
               "findings": runs[0]["findings"], "figures": measured.figures()}
    return report(runs, summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
