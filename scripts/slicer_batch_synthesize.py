"""Headless 3D Slicer batch: synthesise contrast for every volume in a folder with the module's own Logic.

    Slicer --no-main-window --python-script scripts/slicer_batch_synthesize.py -- IN_DIR OUT_DIR [--model CARD] [--stride N] [--device cpu]

Each input gets OUT_DIR/<name>_sCECT_synthetic.nrrd, whose header says SYNTHETIC and carries the model's
provenance (SyntheticContrast.* keys); <name> is the engine batch's unique case name, so 'patient.A' and 'patient.B'
never share an output. Synthesis runs in this process: a headless batch has no panel to keep alive. Any error,
inside a case or around them, ends Slicer with a non-zero exit code.
"""

import argparse
import pathlib
import sys
import traceback

import slicer

from SyntheticContrast import SyntheticContrastLogic
from SyntheticContrastLib import mrml
from SyntheticContrastLib.engine.batch import unique_case_names
from SyntheticContrastLib.io.reading import write_volume

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def main(argv):
    parser = argparse.ArgumentParser(prog="slicer_batch_synthesize")
    parser.add_argument("input_dir", type=pathlib.Path)
    parser.add_argument("output_dir", type=pathlib.Path)
    parser.add_argument("--model", type=pathlib.Path, help="model card JSON (default: bundled demo model)")
    parser.add_argument("--stride", type=int, default=0, help="0 = the model card's default")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    logic = SyntheticContrastLogic()
    print(logic.ensureDependencies(askConfirmation=False))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    inputs = sorted(p for p in args.input_dir.iterdir() if p.name.lower().endswith(SUFFIXES))
    failures = 0
    for n, (path, stem) in enumerate(zip(inputs, unique_case_names([p.name for p in inputs])), 1):
        target = args.output_dir / f"{stem}_sCECT_synthetic.nrrd"
        if target.exists():
            print(f"[{n}/{len(inputs)}] {stem}: already done")
            continue
        try:
            node = slicer.util.loadVolume(str(path))
            p = logic.getParameterNode()
            p.inputVolume, p.stride, p.device = node, args.stride, args.device
            if args.model:
                p.model = str(args.model)
            print(f"[{n}/{len(inputs)}] {stem}: {logic.synthesize(p)}")
            # The engine's writer, not slicer.util.saveNode: Slicer's volume storage node writes no node
            # attributes, and the header must say SYNTHETIC with the model's provenance. It writes atomically.
            write_volume(mrml.volume_from_node(p.outputVolume), target)
        except Exception as exc:  # one bad case is reported and the batch goes on
            failures += 1
            print(f"[{n}/{len(inputs)}] {stem}: FAILED: {exc}", file=sys.stderr)
        finally:
            slicer.mrmlScene.Clear()
    return 1 if failures else 0


def run(argv) -> int:
    """main, with every way out turned into an exit code: a pip failure or a missing folder must not leave
    `Slicer --no-main-window` waiting for ever."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    slicer.app.exit(run(sys.argv[1:]))
