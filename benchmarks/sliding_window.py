"""Benchmark of sliding-window synthesis: our engine vs MONAI's sliding_window_inference vs the paper's stride 1.

Each measurement runs in a fresh subprocess so peak RSS belongs to that method alone. Reports median
wall time over --runs repeats, peak RSS, their ratios, the max difference to MONAI on identical
windows, and the engine's own overhead: a run with a 1x1x1-conv predictor in place of the generator,
minus the time that predictor takes alone on the same number of windows.

    python benchmarks/sliding_window.py --slices 64 300 --runs 5 --json out.json
MONAI is needed only here and in the tests (pip install monai).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SyntheticContrast"))

WINDOW, SIZE = 16, 512


def build_predictor(kind: str):
    import torch

    from SyntheticContrastLib.engine.networks import GeneratorConfig, UNetGenerator3D

    torch.manual_seed(0)
    if kind == "unet":
        return UNetGenerator3D(GeneratorConfig(ngf=4, levels=5, dropout=0.0)).eval()
    conv = torch.nn.Conv3d(3, 3, 1)  # engine overhead only: a predictor that costs next to nothing
    return torch.nn.Sequential(conv, torch.nn.Tanh()).eval()


def volume(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    hu = np.full((n, SIZE, SIZE), -1000.0, np.float32)
    hu[:, 64:448, 32:480] = 40.0
    return hu + rng.normal(0, 20, hu.shape).astype(np.float32)


def run_one(method: str, n: int, predictor_kind: str, stride: int, blend: str, threads: int) -> dict:
    """One timed synthesis in this process; returns seconds, peak RSS (MiB) and a checksum of the result."""
    import numpy as np
    import torch

    from SyntheticContrastLib.engine.encoding import WindowEncoding
    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_array

    torch.set_num_threads(threads)
    enc, g, hu = WindowEncoding(), build_predictor(predictor_kind), volume(n)
    t0 = time.perf_counter()
    predictor_only = None
    if method == "ours":
        out, report = synthesize_array(hu, g, enc, WINDOW, SynthesisOptions(stride=stride, blend=blend, device="cpu"), inplane_multiple=32)
        if predictor_kind == "pointwise":
            # The 1x1x1 conv is not free: time it alone on as many windows, so only the engine's share remains.
            x = enc.encode(torch.from_numpy(hu[:WINDOW].copy()))[None]
            t1 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(report.windows):
                    g(x)
            predictor_only = time.perf_counter() - t1
    elif method == "monai":
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            x = enc.encode(torch.from_numpy(hu))[None]  # MONAI takes the encoded (1, 3, N, 512, 512) tensor
            y = sliding_window_inference(x, (WINDOW, SIZE, SIZE), 1, lambda b: g(b)[:, :1],
                                         overlap=(1 - stride / WINDOW, 0, 0), mode="constant" if blend == "mean" else "gaussian")
        out = enc.decode(y[0, 0].numpy())
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0 - (predictor_only or 0.0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(f"/tmp/bench_{method}_{n}_{predictor_kind}_{stride}_{blend}.npy", out)
    return {"seconds": seconds, "peak_rss_mib": rss, "predictor_only_s": predictor_only}


def measure(method, n, predictor, stride, blend, runs, threads) -> dict:
    results = []
    for _ in range(runs):
        cmd = [sys.executable, __file__, "--child", method, str(n), predictor, str(stride), blend, str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    row = {
        "method": method, "slices": n, "predictor": predictor, "stride": stride, "blend": blend, "runs": runs,
        "median_s": statistics.median(r["seconds"] for r in results),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }
    if results[0]["predictor_only_s"] is not None:
        row["predictor_only_median_s"] = statistics.median(r["predictor_only_s"] for r in results)
    return row


def max_diff(a: str, b: str) -> float:
    import numpy as np

    return float(np.abs(np.load(a) - np.load(b)).max())


def trained_model_check(card: Path, seed: int, runs: int, threads: int) -> dict:
    """The bundled model on a held-out phantom: default stride vs the paper's stride 1 (time and MAE in HU)."""
    import numpy as np
    import torch

    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
    from SyntheticContrastLib.measurement.metrics import mae
    from SyntheticContrastLib.engine.models import load_model
    from SyntheticContrastLib.phantom import make_phantom

    torch.set_num_threads(threads)
    model, case = load_model(card), make_phantom(seed)
    timings, outputs = {}, {}
    for name, options in (("default", SynthesisOptions(device="cpu")), ("stride1_mean", SynthesisOptions(stride=1, blend="mean", device="cpu"))):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            outputs[name], report = synthesize_volume(case.ncct, model, options)
            times.append(time.perf_counter() - t0)
        timings[name] = {"median_s": statistics.median(times), "windows": report.windows, "stride": report.stride}
    a, b = outputs["default"].array, outputs["stride1_mean"].array
    return {
        "model": model.card.model_id, "phantom_seed": seed, "shape": list(a.shape), "runs": runs, "timings": timings,
        "stride1_over_default_time": timings["stride1_mean"]["median_s"] / timings["default"]["median_s"],
        "mae_default_vs_stride1_hu": float(np.abs(a - b).mean()),
        "mae_default_vs_stride1_hu_mediastinal_window": mae(a, b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, nargs="+", default=[64, 300])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stride", type=int, default=8, help="our default stride; MONAI gets the same overlap")
    parser.add_argument("--paper-runs", type=int, default=None, help="repeats for the slow stride-1 runs (default --runs)")
    parser.add_argument("--methods", default="ours,monai,paper,pointwise,gaussian",
                        help="comma list of rows to measure; ratios are reported where both sides were measured")
    parser.add_argument("--gaussian-max-slices", type=int, default=10**6, help="compare Gaussian blending only up to this N")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trained-model", type=Path, help="also compare default stride vs stride 1 on this model card")
    parser.add_argument("--trained-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n, predictor, stride, blend, threads = args.child
        print(json.dumps(run_one(method, int(n), predictor, int(stride), blend, int(threads))))
        return

    import torch

    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads available, "
                         f"{args.threads} used, torch {torch.__version__}, {platform.python_version()}",
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": [], "summary": {}}
    s = args.stride
    for n in args.slices:
        wanted = set(args.methods.split(","))
        plan = {
            "ours": ("ours", "unet", s, "mean", args.runs),
            "monai": ("monai", "unet", s, "mean", args.runs),
            "paper_stride1": ("ours", "unet", 1, "mean", args.paper_runs or args.runs),
            "ours_pointwise": ("ours", "pointwise", s, "mean", args.runs),
        }
        if n <= args.gaussian_max_slices:
            plan["ours_gauss"] = ("ours", "unet", s, "gaussian", args.runs)
            plan["monai_gauss"] = ("monai", "unet", s, "gaussian", args.runs)
        selector = {"ours": "ours", "monai": "monai", "paper_stride1": "paper", "ours_pointwise": "pointwise",
                    "ours_gauss": "gaussian", "monai_gauss": "gaussian"}
        rows = {name: measure(m, n, pred, st, bl, runs, args.threads)
                for name, (m, pred, st, bl, runs) in plan.items() if selector[name] in wanted}
        report["rows"].extend(rows.values())
        f = lambda m, p, st, b: f"/tmp/bench_{m}_{n}_{p}_{st}_{b}.npy"
        ratio = lambda a, b, key="median_s": rows[a][key] / rows[b][key] if a in rows and b in rows else None
        summary = {
            "ours_over_monai_time": ratio("ours", "monai"),
            "ours_over_monai_rss": ratio("ours", "monai", "peak_rss_mib"),
            "ours_over_monai_time_gaussian": ratio("ours_gauss", "monai_gauss"),
            "stride1_over_default_time": ratio("paper_stride1", "ours"),
        }
        if "ours_pointwise" in rows and "ours" in rows:
            engine_only = rows["ours_pointwise"]["median_s"] - rows["ours_pointwise"]["predictor_only_median_s"]
            summary["engine_overhead_share"] = engine_only / rows["ours"]["median_s"]
        if "ours" in rows and "monai" in rows:
            summary["max_abs_diff_vs_monai_mean_hu"] = max_diff(f("ours", "unet", s, "mean"), f("monai", "unet", s, "mean"))
        if "ours" in rows and "paper_stride1" in rows:
            import numpy as np

            a, b = np.load(f("ours", "unet", s, "mean")), np.load(f("ours", "unet", 1, "mean"))
            summary["mae_default_vs_stride1_hu_random_weights"] = float(np.abs(a - b).mean())
        report["summary"][str(n)] = summary
    if args.trained_model:
        report["trained_model"] = trained_model_check(args.trained_model, 9001, args.trained_runs, args.threads)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
