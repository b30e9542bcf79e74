"""Benchmark of sliding-window synthesis, side by side in one run: our engine with each backend, precision and
memory layout, MONAI's sliding_window_inference, and the paper's stride-1 scheme, on an N x 512 x 512 volume with
the paper's U-Net at width --ngf (random weights: the cost of a network does not depend on its values).

Each row runs in a fresh subprocess, so its peak RSS is its own. Per row: wall time, windows, time per window,
the time inside the network's forward passes, the engine's overhead (wall time outside those passes, over wall
time), peak RSS, on CUDA the peak device memory, and the achieved (T)FLOP/s against the device's peak (CUDA: the
vendor's dense tensor peak for the precision; CPU: this CPU's measured fp32 matmul rate).

--trained-model adds what random weights cannot show: on the held-out phantoms, the MAE of each stride and of
bf16 against the paper's stride 1 in fp32, with the trained demo model.

    python benchmarks/sliding_window.py --slices 300 --ngf 16 --runs 1 --threads 2 \\
        --trained-model SyntheticContrast/SyntheticContrastLib/engine/bundled_models/demo_phantom_small.json \\
        --json benchmarks/results_sliding_window_cpu_2core.json
MONAI is needed only here and in the tests (pip install monai); OpenVINO for its rows (the 'openvino' extra).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "SyntheticContrast"), str(ROOT / "benchmarks")]
BUNDLED_CARD = ROOT / "SyntheticContrast/SyntheticContrastLib/engine/bundled_models/demo_phantom_small.json"

WINDOW, SIZE = 16, 512
#: Dense tensor-core peaks in TFLOP/s from the vendors' data sheets (SXM parts; fp32 convolutions run as TF32,
#: PyTorch's default for cuDNN). Devices not listed get no share of peak.
CUDA_PEAK_TFLOPS = {
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "fp32": 183.0},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
}

#: name: (method, stride (None: the default), options). Rows a device cannot run are left out with a reason.
ROWS = {
    "ours": ("ours", None, {}),
    "ours_mean": ("ours", None, {"blend": "mean"}),  # MONAI's "constant" mode: the same sums, so the outputs must agree
    "ours_contiguous": ("ours", None, {"channels_last": "off"}),
    "ours_openvino": ("ours", None, {"backend": "openvino"}),
    "ours_bf16": ("ours", None, {"precision": "bf16"}),
    "ours_compile": ("ours", None, {"compile": True}),
    "ours_cudnn_benchmark": ("ours", None, {"cudnn_benchmark": True}),
    "monai": ("monai", None, {}),
    "paper_stride1": ("ours", 1, {"blend": "mean"}),
}
DEFAULT_ROWS = "ours,ours_mean,ours_contiguous,ours_openvino,ours_bf16,ours_compile,monai,paper_stride1"


class TimedForward:
    """Stands in for the network and adds up the time spent in its forward passes (synchronised on CUDA)."""

    def __init__(self, net, cuda: bool):
        self.net, self.cuda, self.seconds, self.calls = net, cuda, 0.0, 0

    def __call__(self, x):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = self.net(x)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return y

    def __getattr__(self, name):  # .config, .to(), .eval(), .parameters(), .modules() reach the network
        return getattr(self.__dict__["net"], name)


def network(ngf: int):
    import torch

    from SyntheticContrastLib.engine.networks import GeneratorConfig, UNetGenerator3D

    torch.manual_seed(0)
    return UNetGenerator3D(GeneratorConfig(ngf=ngf, levels=9, dropout=0.0)).eval()


def volume(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    hu = np.full((n, SIZE, SIZE), -1000.0, np.float32)
    hu[:, 64:448, 32:480] = 40.0
    return hu + rng.normal(0, 20, hu.shape).astype(np.float32)


def openvino_twin(net, threads: int):
    from SyntheticContrastLib.engine.backends import OpenVINOGenerator, export_onnx

    path = Path(tempfile.mkdtemp()) / "net.onnx"
    export_onnx(SimpleNamespace(generator=net), path, (WINDOW, SIZE, SIZE))
    return OpenVINOGenerator(path, net.config, threads)


def run_row(name: str, n: int, ngf: int, stride: int, device: str, threads: int, out_path: str) -> dict:
    """One timed synthesis in this process."""
    import numpy as np
    import torch

    from SyntheticContrastLib.engine.encoding import WindowEncoding
    from SyntheticContrastLib.engine.devices import resolve_device
    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_array

    method, row_stride, options = ROWS[name]
    options = dict(options)
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if options.pop("cudnn_benchmark", False):
        torch.backends.cudnn.benchmark = True
    net = network(ngf)
    if options.get("backend") == "openvino":
        net = openvino_twin(net, threads)
    if options.pop("compile", False):
        net = torch.compile(net)  # compiled inside the timer, so compile time and graph breaks count as the network's
    timed = TimedForward(net, cuda)
    enc, hu = WindowEncoding(), volume(n)
    stride = row_stride or stride
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    if method == "ours":
        options = {"blend": "gaussian", **options, "stride": stride, "device": str(dev)}
        options.pop("backend", None)  # the stand-in already is the OpenVINO network
        out, report = synthesize_array(hu, timed, enc, WINDOW, SynthesisOptions(**options), inplane_multiple=32)
        notes = report.notes + [report.memory]
    else:
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            x = enc.encode(torch.from_numpy(hu).to(dev))[None]  # MONAI takes the encoded (1, 3, N, 512, 512) tensor
            net.to(dev)
            # "constant" averages like our "mean". MONAI's Gaussian is a discrete kernel and ours the analytic one;
            # the tests check that the two agree when given the same kernel.
            y = sliding_window_inference(x, (WINDOW, SIZE, SIZE), 1, lambda b: timed(b)[:, :1], overlap=(1 - stride / WINDOW, 0, 0),
                                         mode="constant")
        out, notes = enc.decode(y[0, 0]).cpu().numpy(), []
    wall = time.perf_counter() - t0
    np.save(out_path, out)
    return {"row": name, "slices": n, "ngf": ngf, "stride": stride, "device": str(dev), "wall_s": wall,
            "windows": timed.calls, "s_per_window": wall / timed.calls, "forward_s": timed.seconds,
            "engine_overhead_share": (wall - timed.seconds) / wall,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_device_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
            "precision": options.get("precision", "fp32"), "notes": notes}


def flops_per_window(ngf: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(ngf)(torch.zeros(1, 3, WINDOW, SIZE, SIZE))
    return counter.get_total_flops()


def peak_tflops(device: str, precision: str, cpu_gflops: float) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return cpu_gflops / 1000
    name = torch.cuda.get_device_name(torch.device(device))
    return next((p[precision] for key, p in CUDA_PEAK_TFLOPS.items() if key in name), None)


def measure_rows(args, device: str, stride: int, cpu_gflops: float) -> tuple[list[dict], dict]:
    import numpy as np

    flops = flops_per_window(args.ngf)
    rows, skipped, outputs = [], {}, {}
    for name in args.rows.split(","):
        options = ROWS[name][2]
        if options.get("backend") == "openvino" and device != "cpu":
            skipped[name] = "OpenVINO runs on the CPU only"
            continue
        if options.get("cudnn_benchmark") and device == "cpu":
            skipped[name] = "cudnn.benchmark needs a CUDA GPU"
            continue
        results = []
        for _ in range(args.stride1_runs if name == "paper_stride1" else args.runs):
            path = f"{tempfile.gettempdir()}/bench_{name}_{args.slices}.npy"
            cmd = [sys.executable, __file__, "--child", name, str(args.slices), str(args.ngf), str(stride), device,
                   str(args.threads), path]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"row {name} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            outputs[name] = path
        row = min(results, key=lambda r: r["wall_s"])  # fastest of the repeats: the least disturbed
        row["wall_s_median"] = statistics.median(r["wall_s"] for r in results)
        row["runs"] = len(results)
        peak = peak_tflops(row["device"], row["precision"], cpu_gflops)
        row["tflops"] = flops * row["windows"] / row["forward_s"] / 1e12
        row["share_of_peak"] = row["tflops"] / peak if peak else None
        rows.append(row)
        print(f"{name:22s} {row['wall_s']:8.2f} s {row['windows']:4d} windows {row['s_per_window']:7.3f} s/window "
              f"overhead {row['engine_overhead_share']:6.1%} RSS {row['peak_rss_mib']:7.0f} MiB", file=sys.stderr, flush=True)
    by = {r["row"]: r for r in rows}
    ratio = lambda a, b, key="wall_s": by[a][key] / by[b][key] if a in by and b in by else None
    ours = [r for r in rows if r["row"].startswith("ours")]
    best = min(ours, key=lambda r: r["wall_s"])["row"] if ours else None
    summary = {
        "slices": args.slices, "ngf": args.ngf, "default_stride": stride, "gflop_per_window": flops / 1e9,
        "best_ours_row": best,
        "best_ours_over_monai_time": ratio(best, "monai") if best else None,
        "best_ours_over_monai_rss": ratio(best, "monai", "peak_rss_mib") if best else None,
        "ours_torch_over_monai_time": ratio("ours", "monai"),
        "ours_torch_over_monai_rss": ratio("ours", "monai", "peak_rss_mib"),
        "ours_mean_over_monai_time": ratio("ours_mean", "monai"),
        "engine_overhead_share": {r["row"]: r["engine_overhead_share"] for r in ours},
        "stride1_over_default_time": ratio("paper_stride1", "ours"),
        "windows": {"default": by["ours"]["windows"] if "ours" in by else None,
                    "stride1": by["paper_stride1"]["windows"] if "paper_stride1" in by else None},
        "skipped": skipped,
    }
    diff = lambda a, b: float(np.abs(np.load(outputs[a]) - np.load(outputs[b])).max()) if a in outputs and b in outputs else None
    summary["max_abs_diff_hu_vs_ours"] = {name: diff(name, "ours") for name in outputs
                                          if name not in ("ours", "ours_mean", "monai", "paper_stride1")}
    summary["max_abs_diff_hu_ours_mean_vs_monai"] = diff("ours_mean", "monai")
    return rows, summary


def trained_model_check(card: Path, seeds: list[int], strides: list[int], threads: int, device: str, backend: str,
                        phantom_slices: int = 48, phantom_size: int = 512) -> dict:
    """The trained model on held-out phantoms: MAE (HU, whole volume and in the mediastinal window) of each stride
    against the paper's stride 1 + mean, all with ``backend``; and of bf16 against fp32 at the default stride, both
    with PyTorch."""
    import numpy as np
    import torch

    from SyntheticContrastLib.engine.inference import SynthesisOptions, synthesize_volume
    from SyntheticContrastLib.engine.models import load_model
    from SyntheticContrastLib.measurement.metrics import mae
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    torch.set_num_threads(threads)
    model = load_model(card)
    per_case = []

    def synth(ncct, **options):
        t0 = time.perf_counter()
        result, report = synthesize_volume(ncct, model, SynthesisOptions(device=device, **options))
        return result.array, report, time.perf_counter() - t0

    for seed in seeds:
        ncct = make_phantom(seed, PhantomSpec(size=phantom_size, slices=phantom_slices)).ncct
        paper, report, seconds = synth(ncct, stride=1, blend="mean", backend=backend)
        case = {"seed": seed, "shape": list(paper.shape), "backend": backend,
                "stride1": {"windows": report.windows, "seconds": seconds}}
        for stride in strides:
            out, report, seconds = synth(ncct, stride=stride, backend=backend)
            case[f"stride{stride}"] = {"windows": report.windows, "seconds": seconds, "mae_hu": float(np.abs(out - paper).mean()),
                                       "max_hu": float(np.abs(out - paper).max()), "mae_hu_mediastinal": mae(out, paper)}
        fp32, _, fp32_s = synth(ncct)
        try:
            bf16, report, bf16_s = synth(ncct, precision="bf16")
            case["bf16_vs_fp32"] = {"device": report.device, "mae_hu": float(np.abs(bf16 - fp32).mean()),
                                    "max_hu": float(np.abs(bf16 - fp32).max()), "mae_hu_mediastinal": mae(bf16, fp32),
                                    "fp32_s": fp32_s, "bf16_s": bf16_s}
        except ValueError as error:  # a GPU without bf16
            case["bf16_vs_fp32"] = {"skipped": str(error)}
        per_case.append(case)
        print(f"phantom {seed}: " + ", ".join(f"{k} {v['mae_hu']:.2f} HU" for k, v in case.items() if isinstance(v, dict) and "mae_hu" in v),
              file=sys.stderr, flush=True)
    keys = [k for k in per_case[0] if isinstance(per_case[0][k], dict) and "mae_hu" in per_case[0][k]]
    return {"model": model.card.model_id, "card_default_stride": model.card.default_stride, "device": device,
            "phantom_seeds": seeds, "cases": per_case,
            "mean_mae_hu": {k: statistics.mean(c[k]["mae_hu"] for c in per_case) for k in keys},
            "mean_mae_hu_mediastinal": {k: statistics.mean(c[k]["mae_hu_mediastinal"] for c in per_case) for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300, help="volume length; 0 skips the timed rows")
    parser.add_argument("--ngf", type=int, default=16, help="width of the paper's U-Net (the paper's is 64)")
    parser.add_argument("--runs", type=int, default=1, help="repeats per row; the fastest is reported")
    parser.add_argument("--stride1-runs", type=int, default=1, help="repeats of the slow stride-1 row")
    parser.add_argument("--stride", type=int, default=None, help="our default stride (default: the bundled card's)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trained-model", type=Path, help="also measure MAE per stride and bf16 with this model card")
    parser.add_argument("--phantoms", type=int, nargs="+", default=[9001, 9002, 9003], help="held-out phantom seeds")
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 10, 12], help="strides to compare with stride 1")
    parser.add_argument("--phantom-slices", type=int, default=48, help="held-out phantoms' slices (default 48, as trained)")
    parser.add_argument("--phantom-size", type=int, default=512, help="held-out phantoms' in-plane size (default 512)")
    parser.add_argument("--trained-backend", default="openvino",
                        help="backend of the stride comparison (default openvino: 2.6x faster on the CPU, 0.01 HU from PyTorch)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n, ngf, stride, device, threads, out = args.child
        print(json.dumps(run_row(name, int(n), int(ngf), int(stride), device, int(threads), out)))
        return

    import torch

    from cpu_backends import matmul_gflops

    stride = args.stride or json.loads(BUNDLED_CARD.read_text())["default_stride"]
    cpu_gflops = matmul_gflops(args.threads)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    report = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} of {torch.get_num_threads()} "
                         f"threads, GPU {gpu}, torch {torch.__version__}, Python {platform.python_version()}",
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_matmul_gflops_fp32": cpu_gflops}
    if args.slices:
        report["rows"], report["summary"] = measure_rows(args, device, stride, cpu_gflops)
    if args.trained_model:
        report["trained_model"] = trained_model_check(args.trained_model, args.phantoms, args.strides, args.threads,
                                                      device, args.trained_backend if device == "cpu" else "torch",
                                                      args.phantom_slices, args.phantom_size)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
