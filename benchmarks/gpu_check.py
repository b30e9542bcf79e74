"""One command that proves the engine's CUDA paths on the first GPU a session is lent, in at most 8 minutes on one
H100/H200-class GPU, with nothing to install or decide on the clock:

    python benchmarks/gpu_check.py --out gpu_check           # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out gpu_check  # anywhere: every step's plumbing, CPU-sized (CI runs it)

Steps, each in its own process with its own time limit; a failed step is recorded and the rest still run:
1. the GPU tests (``pytest -m gpu tests/test_gpu.py``): accumulators, copies, out-of-memory, bf16, cancel;
2. the sliding-window benchmark: the paper-size generator (ngf 64) on 512 x 512 x 300, fp32, bf16 (auto),
   torch.compile and MONAI on the same windows (s per volume, TFLOP/s against the data-sheet peak, engine overhead,
   peak device memory, where the accumulator lived);
3. the trained check: bf16 against fp32 (and strides against stride 1) with the demo model on held-out phantoms;
4. the planner's estimates against the measured peaks: host RSS and the device's max_memory_allocated, at 48 and 300
   slices with the demo model (benchmarks/planner.py);
5. a 1-GPU torchrun (NCCL) smoke run of ``train``, then ``--resume``.
It writes OUT/gpu_check.json and OUT/gpu_check.md: device, driver, torch and CUDA versions, and every step's
figures, status and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "SyntheticContrast/SyntheticContrastLib/engine/bundled_models/demo_phantom_small.json"


def steps(out: Path, dry_run: bool) -> list[dict]:
    """(name, command, seconds allowed, JSON it writes) of each step; the dry run shrinks sizes, never skips a step."""
    py, device = sys.executable, "cpu" if dry_run else "cuda"
    sliding = ["--slices", "16", "--ngf", "4", "--rows", "ours"] if dry_run else \
        ["--slices", "300", "--ngf", "64", "--rows", "ours,ours_bf16,ours_compile,monai"]
    trained = ["--phantoms", "9001", "--strides", "10", "--phantom-slices", "16", "--phantom-size", "128"] if dry_run else \
        ["--phantoms", "9001", "9002", "9003", "--strides", "8", "10", "12"]
    train = ["--phantom-seeds", "1", "--phantom-slices", "16", "--ngf", "4", "--levels", "4", "--crop", "64",
             "--samples-per-volume", "2", "--device", device, "--output", str(out / "torchrun")]
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "SyntheticContrastLib.cli", "train"]
    return [
        {"name": "gpu tests", "command": [py, "-m", "pytest", "-m", "gpu", str(ROOT / "tests" / "test_gpu.py"), "-q", "-rs",
                                           "-p", "no:cacheprovider", "--junitxml", str(out / "gpu_tests.xml")], "limit_s": 150},
        {"name": "sliding-window benchmark", "command": [py, str(ROOT / "benchmarks" / "sliding_window.py"), *sliding, "--device", device,
                                                          "--runs", "1", "--json", str(out / "sliding_window.json")],
         "limit_s": 240, "json": out / "sliding_window.json"},
        {"name": "trained bf16 and stride check", "command": [py, str(ROOT / "benchmarks" / "sliding_window.py"), "--slices", "0",
                                                               "--trained-model", str(CARD), "--trained-backend", "torch", *trained,
                                                               "--device", device, "--json", str(out / "trained.json")],
         "limit_s": 120, "json": out / "trained.json"},
        {"name": "planner against the measured peaks", "command": [py, str(ROOT / "benchmarks" / "planner.py"),
                                                                    *(["--slices", "16", "--size", "128"] if dry_run else
                                                                      ["--slices", "48,300"]), "--device", device,
                                                                    "--json", str(out / "planner.json")],
         "limit_s": 150, "json": out / "planner.json"},
        {"name": "torchrun train", "command": [*torchrun, *train, "--epochs", "1"], "limit_s": 60},
        {"name": "torchrun train --resume", "command": [*torchrun, *train, "--epochs", "2", "--resume"], "limit_s": 60},
    ]


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True)
        env["driver"] = query.stdout.strip() or query.stderr.strip()
    return env


def run_step(step: dict, log_dir: Path) -> dict:
    t0 = time.perf_counter()
    log = log_dir / (step["name"].replace(" ", "_").replace("-", "_") + ".log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "SyntheticContrast"), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(step["command"], capture_output=True, text=True, timeout=step["limit_s"], cwd=ROOT, env=env)
        status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        text = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {step['limit_s']} s"
        text = (exc.stdout or b"").decode("utf-8", "replace") + (exc.stderr or b"").decode("utf-8", "replace") \
            if isinstance(exc.stdout, bytes) or exc.stdout is None else str(exc.stdout)
    log.write_text(text, encoding="utf-8")
    result = {"name": step["name"], "status": status, "seconds": round(time.perf_counter() - t0, 1), "log": str(log),
              "command": " ".join(str(c) for c in step["command"])}
    if step.get("json") and Path(step["json"]).is_file():
        result["figures"] = json.loads(Path(step["json"]).read_text())
    if step["name"] == "gpu tests":
        result["summary"] = (text.strip().splitlines() or [""])[-1]
    return result


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check{' (DRY RUN on the CPU: plumbing only, no GPU figure)' if report['dry_run'] else ''}", "",
             f"Device {env['device']}, driver {env.get('driver', '-')}, torch {env['torch']}, CUDA {env['cuda']}, "
             f"cuDNN {env['cudnn']}, Python {env['python']}; {report['total_s']:.0f} s in all.", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} |" for s in report["steps"]]
    for s in report["steps"]:
        if s.get("summary"):
            lines += ["", f"GPU tests: {s['summary']}"]
        figures = s.get("figures") or {}
        if s["name"].startswith("planner"):
            summary = figures.get("summary", {})
            lines += ["", f"Planner: worst error {summary.get('worst_error')} (goal: {summary.get('goal')})"]
            lines += [f"- {r['slices']} slices: {r['line']}; measured host peak {r['measured_peak_mib']} MiB"
                      + (f", device peak {r['measured_device_peak_mib']} MiB against {r['estimate_device_mib']} estimated"
                         if "measured_device_peak_mib" in r else "") for r in summary.get("runs", [])]
            continue
        for row in (figures.get("summary") or {}).get("rows", []) if isinstance(figures.get("summary"), dict) else []:
            lines.append(f"- {row}")
        if "summary" in figures and not isinstance(figures["summary"], dict):
            lines += ["", f"Sliding window: {json.dumps(figures['summary'])[:1500]}"]
        elif "summary" in figures:
            lines += ["", "Sliding window (s per volume, TFLOP/s and share of peak, overhead, peak memory, accumulator):",
                      "```", json.dumps(figures["summary"], indent=1)[:3000], "```"]
        if "trained_model" in figures:
            t = figures["trained_model"]
            lines += ["", f"Trained model {t['model']} on phantoms {t['phantom_seeds']}: mean MAE (HU) {json.dumps(t['mean_mae_hu'])}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with small inputs: the plumbing, in CI")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "torchrun", ignore_errors=True)  # a rerun's train starts clean, then resumes its own run
    t0 = time.perf_counter()
    report = {"dry_run": args.dry_run, "environment": environment(), "steps": []}
    for step in steps(args.out, args.dry_run):
        report["steps"].append(run_step(step, args.out))
        print(f"{step['name']}: {report['steps'][-1]['status']} ({report['steps'][-1]['seconds']:.1f} s)", flush=True)
    report["total_s"] = time.perf_counter() - t0
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {args.out / 'gpu_check.md'} and gpu_check.json")
    return 0 if all(s["status"] == "passed" for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
