"""benchmarks/gpu_check.py --dry-run: the GPU session's one command works, step by step, before a GPU sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_runs_every_step_and_writes_its_summary(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    names = [s["name"] for s in report["steps"]]
    assert names == ["gpu tests", "sliding-window benchmark", "trained bf16 and stride check", "planner against the measured peaks",
                     "torchrun train", "torchrun train --resume"]
    assert all(s["status"] == "passed" for s in report["steps"]), report["steps"]
    tests = report["steps"][0]["summary"]
    assert "skipped" in tests and "passed" not in tests  # no CUDA here: every GPU test skips, none runs on the CPU
    assert report["steps"][1]["figures"]["rows"] and "bf16_vs_fp32" in report["steps"][2]["figures"]["trained_model"]["cases"][0]
    (planned,) = report["steps"][3]["figures"]["runs"]
    assert abs(planned["estimate_in_run_error"]) <= 0.25 and planned["line"].startswith("fits: ")
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("# GPU check (DRY RUN") and "| torchrun train --resume | passed |" in text
    assert (tmp_path / "torchrun" / "checkpoint.pt").is_file()
