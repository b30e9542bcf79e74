"""A short training run as a new user makes it, with validation on: a tiny model, 4 phantom cases, 2 epochs, on the
CPU. It took 25 minutes when validation ran whole volumes every epoch; the goal is under 3. It also checks that the
run folder holds what a run must: split.json, the curve PNG, the best checkpoint and a card with its record.

    python benchmarks/short_training.py --json benchmarks/results_short_training_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = ["train", "--phantom-seeds", "1-4", "--epochs", "2", "--ngf", "4", "--levels", "5", "--crop", "64",
           "--device", "cpu"]  # the flags of the run that took 25 minutes, and nothing else


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "SyntheticContrastLib.cli", *COMMAND, "--output", str(run)],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
        card = json.loads((run / "sct-model.json").read_text())
        split = json.loads((run / "split.json").read_text())
        result = {
            "command": "synthetic-contrast " + " ".join(COMMAND) + " --output RUN",
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": platform.python_version(),
            "wall_s": round(seconds, 1), "goal_s": 180, "epoch_seconds": [row["seconds"] for row in card["training"]["history"]],
            "holds": {name: (run / name).is_file() for name in ("split.json", "curves.png", "best.pt", "checkpoint.pt", "config.json")},
            "validation_pairs": split["validation"]["pairs"], "exported_epoch": card["training"]["exported_epoch"],
            "best": card["training"]["best"], "warning": card["training"].get("warning"),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
