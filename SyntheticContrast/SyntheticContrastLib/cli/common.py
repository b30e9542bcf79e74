"""What every verb shares: exit codes, synthesis options, progress (a bar or JSON lines) and the
out-of-distribution report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUT_OF_DISTRIBUTION, EXIT_CANCELLED = 0, 1, 2, 3, 130


def seed_list(text: str) -> list[int]:
    """'1-5,9' -> [1, 2, 3, 4, 5, 9]."""
    seeds = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds.extend(range(int(a), int(b) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def synthetic_output_path(input_path: Path, output: Path) -> Path:
    """A folder gets '<input>_sCECT_synthetic.nii.gz'; a file name must itself say 'synthetic'."""
    if output.is_dir() or str(output).endswith(("/", "\\")):
        stem = input_path.name.split(".")[0] if input_path.is_file() else input_path.name
        return output / f"{stem}_sCECT_synthetic.nii.gz"
    return output


def _batch_size(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch size: give a whole number >= 1 or auto") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1 or auto, got {value}")
    return value


def add_synthesis_options(p: argparse.ArgumentParser) -> None:
    from ..engine.devices import DEVICE_HELP
    from ..engine.bundled import DEFAULT_MODEL_CARD

    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_CARD,
                   help="model store name ('models list') or model card JSON (default: the bundled phantom demo model)")
    p.add_argument("--stride", type=int, default=None, help="slices between window starts (default: the model card's; 1 = paper)")
    p.add_argument("--blend", choices=["mean", "gaussian"], default="gaussian", help="how overlapping windows are combined (default gaussian)")
    p.add_argument("--batch", type=_batch_size, default=None, metavar="N|auto",
                   help="windows per forward pass (default auto: the largest that the plan says fits on a GPU, 1 on the CPU)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="fp32",
                   help="autocast precision; accumulation stays fp32. auto: bf16 on GPUs that support it, fp32 elsewhere (default fp32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default auto)")
    p.add_argument("--tile-overlap", type=float, default=0.5, help="in-plane tile overlap for models with a smaller in-plane window (default 0.5)")
    p.add_argument("--samples", type=int, default=1,
                   help="stochastic passes (MC dropout + test-time shifts); > 1 also writes the per-voxel SD as <output>_sd. "
                        "Time grows N-fold (default 1)")
    p.add_argument("--samples-seed", type=int, default=0, help="seed of the samples' dropout masks and shifts (default 0)")
    p.add_argument("--backend", choices=["torch", "openvino"], default="torch",
                   help="what runs the network: PyTorch (default), or OpenVINO on the CPU in fp32 (about 2x faster on the CPUs "
                        "measured; needs the 'openvino' extra; no MC-dropout samples)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="run PyTorch convolutions in the channels_last_3d layout (auto: on the CPU, where it took 10%% less memory "
                        "in the same time)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (needs a C++ compiler). On the CPU a compiled volume took 30%% less time, "
                        "but the first run, which compiles, took 15%% more")


def add_strict_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="refuse (exit 3, nothing written) when the input is out of the model's "
                                                          "training distribution or the output's enhancement is implausible")
    p.add_argument("--plausibility-map", action="store_true",
                   help="also write the output's violation map (<output>_plausibility, a SYNTHETIC label volume: 1 enhanced where "
                        "contrast cannot reach, 2 darker than the NCCT, 3 above the enhancement ceiling)")


def synthesize_reporting(volume, model, args, findings, progress=None):
    """synthesize_case, then the output's plausibility findings, one stderr line each (and one JSON event); with
    --strict they are reported before the refusal, as the input's are."""
    from ..engine.case import synthesize_case
    from ..errors import ImplausibleOutputError

    case = refused = None
    try:
        case = synthesize_case(volume, model, synthesis_options(args), findings, progress, strict=args.strict,
                               on_plan=plan_reporter(args))
        implausible, summary = case.plausibility, case.plausibility_summary
    except ImplausibleOutputError as exc:
        refused, implausible, summary = exc, exc.findings, "refused (--strict)"
    for finding in implausible:
        print(finding.line(), file=sys.stderr)
    if getattr(args, "progress_json", False):
        from ..trust.ood import as_dicts

        emit_event("plausibility", findings=as_dicts(implausible), summary=summary)
    if refused is not None:
        raise refused
    return case


def plan_reporter(args):
    """The engine's plan, said before the first window: one stderr line (and its notes), and a 'plan' JSON event with
    every figure for a calling program."""

    def report(plan) -> None:
        print(f"plan: {plan.line()}", file=sys.stderr, flush=True)
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        if getattr(args, "progress_json", False):
            emit_event("plan", **plan.as_dict())

    return report


def emit_event(event: str, **fields) -> None:
    """One JSON line on stdout for a calling program (the Slicer module reads these from the log file)."""
    print(json.dumps({"event": event, **fields}), flush=True)


class ProgressEvents:
    """Turns the engine's (done, total) callback into 'progress' events with the fraction and an ETA."""

    def __init__(self, device: str):
        import time

        self._clock = time.monotonic
        self._start = self._clock()
        self.device = device

    def progress(self, done: int, total: int) -> None:
        elapsed = self._clock() - self._start
        eta = elapsed / done * (total - done) if done else None
        emit_event("progress", fraction=done / total if total else 1.0, windows_done=done, windows_total=total,
                   eta_s=None if eta is None else round(eta, 1), device=self.device)


def synthesis_options(args, device: str | None = None):
    from ..engine.inference import SynthesisOptions

    return SynthesisOptions(args.stride, args.blend, args.batch, args.precision, device or args.device, tile_overlap=args.tile_overlap,
                            samples=args.samples, seed=args.samples_seed, backend=args.backend, channels_last=args.channels_last,
                            compile=args.compile)


def synthesize_with_progress(volume, model, args):
    """Synthesis with a tqdm bar counting windows (hidden by --no-progress), or JSON progress lines."""
    from ..engine.inference import synthesize_volume

    return synthesize_volume(volume, model, synthesis_options(args), progress=progress_callback(args),
                             on_plan=plan_reporter(args))


def report_findings(volume, model, args) -> list:
    """Out-of-distribution findings, one stderr line each (and one JSON event); --strict stops here."""
    from ..engine.case import check_input, refuse_if_strict

    findings = check_input(volume, model)
    for finding in findings:
        print(finding.line(), file=sys.stderr)
    if args.progress_json:
        from ..trust.ood import as_dicts

        emit_event("ood", findings=as_dicts(findings), checked=bool(model.card.input_statistics))
    refuse_if_strict(volume, findings, args.strict)
    return findings


def progress_callback(args):
    """The engine's progress callback: JSON events (synthesize --progress-json), or a tqdm bar, or none."""
    from ..engine.devices import resolve_device

    if getattr(args, "progress_json", False):
        return ProgressEvents(str(resolve_device(args.device))).progress
    if args.no_progress:
        return None
    from .progress import progress_bar

    bar = progress_bar(unit="window", desc="synthesizing")

    def progress(done, total):
        bar.update_to(done, total)
        if done == total:
            bar.close()

    return progress
