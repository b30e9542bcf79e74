"""Command line ``synthetic-contrast <verb>``: synthesize, train, phantom, demo, evaluate, cnr.

Exit codes: 0 success, 1 the work failed (bad input, bad model, write error), 2 usage error, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def _seed_list(text: str) -> list[int]:
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


def _add_synthesis_options(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL_CARD

    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_CARD, help="model card JSON (default: bundled phantom demo model)")
    p.add_argument("--stride", type=int, default=None, help="slices between window starts (default: the model card's; 1 = paper)")
    p.add_argument("--blend", choices=["mean", "gaussian"], default="gaussian", help="how overlapping windows are combined (default gaussian)")
    p.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="autocast precision; accumulation stays fp32")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu")
    p.add_argument("--series", default=None, help="SeriesInstanceUID to use when a DICOM folder holds several series")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthetic-contrast", description="Synthetic contrast-enhanced CT from non-contrast chest CT (3D pix2pix).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synthesize", help="make a synthetic contrast-enhanced CT from one NCCT volume")
    p.add_argument("input", type=Path, help="NCCT volume: NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument("output", type=Path, help="output file (.nii.gz/.nii/.nrrd/.mha) whose name says 'synthetic', or a folder")
    _add_synthesis_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("phantom", help="write procedural paired chest phantom cases (NCCT, CECT, ROI JSON)")
    p.add_argument("output", type=Path, help="folder to write <case>_ncct.nii.gz, <case>_cect.nii.gz, <case>_rois.json")
    p.add_argument("--seeds", default="0", help="seeds, e.g. '1-5,9' (default 0)")
    p.add_argument("--slices", type=int, default=48, help="slices per case (default 48, 2.5 mm)")
    p.add_argument("--size", type=int, default=512, help="in-plane size in pixels (default 512, 0.7 mm)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("train", help="train a generator (paper recipe by default); torchrun for several GPUs/nodes")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, help="CSV with columns input,target, or folder of <case>_ncct.*/<case>_cect.*")
    src.add_argument("--phantom-seeds", help="train on generated phantom cases with these seeds, e.g. '1000-1015'")
    p.add_argument("--output", type=Path, required=True, help="folder for checkpoint, log, samples and the model card")
    p.add_argument("--config", type=Path, help="JSON with TrainConfig fields (anything below overrides it)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--ngf", type=int, help="generator base width (paper 64)")
    p.add_argument("--levels", type=int, help="U-Net levels (paper 9 for 512 px)")
    p.add_argument("--dropout", type=float, help="decoder dropout of the innermost 3 levels (pix2pix 0.5)")
    p.add_argument("--ndf", type=int, help="discriminator base width (paper 64)")
    p.add_argument("--crop", type=int, help="in-plane training crop in px (default: whole slices)")
    p.add_argument("--samples-per-volume", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-decay-epoch", type=int)
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--model-id")
    p.add_argument("--default-stride", type=int)
    p.add_argument("--register", action="store_true", help="rigidly register each target to its input first (SimpleITK)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt exactly")
    p.add_argument("--phantom-slices", type=int, default=48)
    p.set_defaults(func=cmd_train)
    return parser


def cmd_synthesize(args) -> int:
    from tqdm import tqdm

    from .inference import SynthesisOptions, synthesize_volume
    from .models import load_model
    from .volume_io import read_volume, write_volume

    out = synthetic_output_path(args.input, args.output)
    if "synthetic" not in out.name.lower():
        print(f"error: output name {out.name!r} must contain 'synthetic' so the result is never taken for a real scan, "
              f"e.g. {out.name.split('.')[0]}_synthetic.nii.gz", file=sys.stderr)
        return EXIT_USAGE
    if out.resolve() == args.input.resolve():
        print("error: output would overwrite the input", file=sys.stderr)
        return EXIT_USAGE
    model = load_model(args.model)
    volume = read_volume(args.input, series_uid=args.series)
    options = SynthesisOptions(args.stride, args.blend, args.batch, args.precision, args.device)
    with tqdm(total=None, unit="window", desc="synthesizing", disable=args.no_progress) as bar:
        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

        result, report = synthesize_volume(volume, model, options, progress=progress)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    write_volume(result, out)
    print(f"wrote {out} (SYNTHETIC; model {model.card.model_id}, {report.windows} windows, stride {report.stride}, {report.blend} blending, {report.device})")
    return EXIT_OK


def cmd_phantom(args) -> int:
    from .phantom import PhantomSpec, make_phantom
    from .rois import write_rois
    from .volume_io import write_volume

    spec = PhantomSpec(size=args.size, slices=args.slices)
    for seed in _seed_list(args.seeds):
        case = make_phantom(seed, spec)
        name = f"phantom{seed:04d}"
        write_volume(case.ncct, args.output / f"{name}_ncct.nii.gz")
        write_volume(case.cect, args.output / f"{name}_cect.nii.gz")
        write_rois(case.annotations, args.output / f"{name}_rois.json")
        print(f"wrote {name}: {len(case.annotations['lesions'])} lymph nodes")
    return EXIT_OK


def phantom_pairs(seeds, slices: int = 48):
    from .phantom import PhantomSpec, make_phantom
    from .training import PairedVolume

    pairs = []
    for seed in seeds:
        case = make_phantom(seed, PhantomSpec(slices=slices))
        pairs.append(PairedVolume(f"phantom{seed:04d}", case.ncct.array, case.cect.array))
    return pairs


def cmd_train(args) -> int:
    import dataclasses

    from .networks import GeneratorConfig
    from .training import TrainConfig, Trainer, load_pairs, read_pair_list, split_pairs

    cfg = TrainConfig.from_dict(json.loads(args.config.read_text())) if args.config else TrainConfig()
    gen = dataclasses.replace(cfg.generator, **{k: v for k, v in (("ngf", args.ngf), ("levels", args.levels), ("dropout", args.dropout)) if v is not None})
    overrides = {
        "epochs": args.epochs, "discriminator_ndf": args.ndf, "crop": args.crop, "samples_per_volume": args.samples_per_volume,
        "lr": args.lr, "lr_decay_epoch": args.lr_decay_epoch, "precision": args.precision, "device": args.device,
        "seed": args.seed, "model_id": args.model_id, "default_stride": args.default_stride,
    }
    cfg = dataclasses.replace(cfg, generator=gen, **{k: v for k, v in overrides.items() if v is not None})
    if args.phantom_seeds:
        pairs = phantom_pairs(_seed_list(args.phantom_seeds), args.phantom_slices)
        cfg = dataclasses.replace(cfg, training_data=f"procedural chest phantom, seeds {args.phantom_seeds}, {args.phantom_slices} slices")
    else:
        pairs = load_pairs(read_pair_list(args.pairs), register=args.register)
    train, val = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    trainer = Trainer(cfg, args.output, progress=print)
    if args.resume:
        trainer.load_checkpoint()
        print(f"resumed after epoch {trainer.epoch}")
    trainer.fit(train, val)
    if trainer.rank == 0:
        print(f"model card: {args.output / (cfg.model_id + '.json')}")
    return EXIT_OK


def main(argv=None) -> int:
    from .errors import SynthesisCancelled, SyntheticContrastError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except (SynthesisCancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    except SyntheticContrastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # option combinations the engine refuses (e.g. fp16 on CPU)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
