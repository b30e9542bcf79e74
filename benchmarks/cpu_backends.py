"""Time per window of the generator on the CPU with each backend (PyTorch, ONNX Runtime, OpenVINO fp32), its
achieved GFLOP/s against this CPU's measured fp32 matmul rate, and how far each backend's output is from PyTorch's
in HU. Random weights: the cost of a network does not depend on its values.

    python benchmarks/cpu_backends.py --ngf 16 64 --runs 3 --threads 2 --json benchmarks/results_cpu_backends_2core.json
    python benchmarks/cpu_backends.py --ngf --demo --threads 2 --json benchmarks/results_cpu_backends_demo_2core.json

``--demo`` also times the whole engine (``synthesize_volume``) with the bundled demo model on its held-out phantom
(48 x 512 x 512) with each backend the engine offers, and compares the sCECTs in HU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "SyntheticContrast"), str(ROOT / "benchmarks")]

from _results import report  # noqa: E402

WINDOW = (16, 512, 512)


def matmul_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 2 * 2048 ** 3 * 5 / (time.perf_counter() - t0) / 1e9


def timed(run, runs: int) -> float:
    run()  # warm-up: first calls allocate and compile
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_size(ngf: int, runs: int, threads: int, peak: float) -> list[dict]:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from SyntheticContrastLib.engine.encoding import WindowEncoding
    from SyntheticContrastLib.engine.networks import GeneratorConfig, UNetGenerator3D

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    generator = UNetGenerator3D(GeneratorConfig(ngf=ngf, levels=9, dropout=0.0)).eval()
    x = torch.randn(1, 3, *WINDOW)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        reference = generator(x)
    flops = counter.get_total_flops()
    half_range = (WindowEncoding().output_range_hu[1] - WindowEncoding().output_range_hu[0]) / 2  # tanh units -> HU
    rows = []

    def row(name, seconds, out):
        rows.append({"ngf": ngf, "backend": name, "s_per_window": round(seconds, 3), "gflop_per_window": round(flops / 1e9, 1),
                     "gflops": round(flops / seconds / 1e9, 1), "share_of_matmul_peak": round(flops / seconds / 1e9 / peak, 3),
                     "max_abs_diff_hu": round(float(np.abs(out - reference.numpy()).max()) * half_range, 3)})

    with torch.inference_mode():
        row("torch", timed(lambda: generator(x), runs), reference.numpy())
    with tempfile.TemporaryDirectory() as tmp:
        import warnings

        onnx = Path(tmp) / "g.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(generator, x, str(onnx), input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
            row("onnxruntime", timed(lambda: session.run(None, {"x": x.numpy()}), runs), session.run(None, {"x": x.numpy()})[0])
        except ImportError:
            print("onnxruntime not installed: skipped", file=sys.stderr)
        try:
            import openvino as ov

            core = ov.Core()
            for hint in ("f32", "bf16"):
                compiled = core.compile_model(core.read_model(str(onnx)), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint})
                row(f"openvino {hint}", timed(lambda: compiled([x.numpy()]), runs), compiled([x.numpy()])[0])
        except ImportError:
            print("openvino not installed: skipped", file=sys.stderr)
    return rows


def demo(threads: int) -> list[dict]:
    import os
    import warnings

    import numpy as np
    import torch

    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
    from SyntheticContrastLib.engine.models import load_model
    from SyntheticContrastLib.phantom import make_phantom

    torch.set_num_threads(threads)
    os.environ.setdefault("SYNTHETIC_CONTRAST_MODELS", tempfile.mkdtemp())
    model, case = load_model(), make_phantom(9001)
    results, rows = {}, []
    for backend in ("torch", "openvino", "openvino"):  # the first OpenVINO run includes the one-time ONNX export
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            result, report_ = synthesize_volume(case.ncct, model, SynthesisOptions(device="cpu", backend=backend))
        seconds = time.perf_counter() - t0
        first = backend not in results
        results.setdefault(backend, result.array)
        diff = np.abs(result.array - results["torch"])
        rows.append({"demo": True, "backend": backend, "run": "-" if backend == "torch" else "first (export)" if first else "cached",
                     "seconds": round(seconds, 1), "windows": report_.windows, "max_abs_diff_hu": round(float(diff.max()), 4),
                     "mean_abs_diff_hu": round(float(diff.mean()), 5)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ngf", type=int, nargs="*", default=[16], help="generator widths to time one window of (none: skip)")
    parser.add_argument("--demo", action="store_true", help="also time the engine end to end with the demo model")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    peak = matmul_gflops(args.threads)
    runs = [r for ngf in args.ngf for r in one_size(ngf, args.runs, args.threads, peak)]
    demo_rows = demo(args.threads) if args.demo else []
    summary = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads", "window": list(WINDOW),
               "matmul_gflops_fp32": round(peak, 1),
               "speedup_vs_torch": {f"{r['backend']} ngf {r['ngf']}": round(next(t["s_per_window"] for t in runs
                                    if t["ngf"] == r["ngf"] and t["backend"] == "torch") / r["s_per_window"], 2) for r in runs}}
    if demo_rows:
        summary["demo"] = demo_rows
    for r in runs:
        print(f"ngf {r['ngf']:3d} {r['backend']:14s} {r['s_per_window']:8.3f} s/window {r['gflops']:8.1f} GFLOP/s "
              f"({r['share_of_matmul_peak']:.0%} of matmul) max diff {r['max_abs_diff_hu']:.3f} HU")
    return report(runs + demo_rows, summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
