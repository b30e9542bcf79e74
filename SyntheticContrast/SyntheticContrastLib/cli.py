"""Command line ``synthetic-contrast <verb>``: synthesize, demo, phantom, train, evaluate, cnr, batch, export-dicom, reader-study.

Exit codes: 0 success, 1 the work failed (bad input, bad model, write error), 2 usage error, 3 refused as
out of distribution (--strict), 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUT_OF_DISTRIBUTION, EXIT_CANCELLED = 0, 1, 2, 3, 130


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
    from .engine.models import DEFAULT_MODEL_CARD

    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_CARD, help="model card JSON (default: bundled phantom demo model)")
    p.add_argument("--stride", type=int, default=None, help="slices between window starts (default: the model card's; 1 = paper)")
    p.add_argument("--blend", choices=["mean", "gaussian"], default="gaussian", help="how overlapping windows are combined (default gaussian)")
    p.add_argument("--batch", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="autocast precision; accumulation stays fp32")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu")
    p.add_argument("--tile-overlap", type=float, default=0.5, help="in-plane tile overlap for models with a smaller in-plane window (default 0.5)")
    p.add_argument("--samples", type=int, default=1,
                   help="stochastic passes (MC dropout + test-time shifts); > 1 also writes the per-voxel SD as <output>_sd. "
                        "Time grows N-fold (default 1)")
    p.add_argument("--samples-seed", type=int, default=0, help="seed of the samples' dropout masks and shifts (default 0)")


def _add_strict_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="refuse (exit 3, nothing written) when the input is out of the model's training distribution")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthetic-contrast", description="Synthetic contrast-enhanced CT from non-contrast chest CT (3D pix2pix).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synthesize", help="make a synthetic contrast-enhanced CT from one NCCT volume")
    p.add_argument("input", type=Path, help="NCCT volume: NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument("output", type=Path, help="output file (.nii.gz/.nii/.nrrd/.mha) whose name says 'synthetic', or a folder")
    _add_synthesis_options(p)
    p.add_argument("--series", default=None, help="SeriesInstanceUID to use when a DICOM folder holds several series")
    p.add_argument("--dicom-out", type=Path, help="also write the sCECT as a derived DICOM series into this new folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_strict_option(p)
    p.add_argument("--progress-json", action="store_true",
                   help="print one JSON object per line on stdout (progress, notes, result, error) for a calling program; hides the bar")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("batch", help="synthesize many cases (folder tree or CSV manifest); resumable; torchrun shards cases")
    p.add_argument("input", type=Path, help="folder tree of NIfTI/NRRD/MHA files and DICOM series folders, or CSV with case,input[,series]")
    p.add_argument("output", type=Path, help="folder for outputs/, status/, logs/, manifest.csv (and dicom/)")
    _add_synthesis_options(p)
    p.add_argument("--dicom", action="store_true", help="also export each sCECT as a derived DICOM series")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_strict_option(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("export-dicom", help="write a synthetic volume as a derived DICOM series beside its source series")
    p.add_argument("synthetic", type=Path, help="the sCECT volume (NIfTI/NRRD/MHA) made by this tool")
    p.add_argument("source", type=Path, help="the source NCCT DICOM series folder (patient, study, frame of reference)")
    p.add_argument("output", type=Path, help="new, empty folder for the synthetic series")
    p.add_argument("--series", default=None, help="SeriesInstanceUID in the source folder if it holds several")
    p.add_argument("--series-number-offset", type=int, default=1000)
    p.add_argument("--model", type=Path, help="model card, needed for NIfTI inputs whose header cannot hold the full sha256")
    p.set_defaults(func=cmd_export_dicom)

    p = sub.add_parser("phantom", help="write procedural paired chest phantom cases (NCCT, CECT, ROI JSON)")
    p.add_argument("output", type=Path, help="folder to write <case>_ncct.nii.gz, <case>_cect.nii.gz, <case>_rois.json")
    p.add_argument("--seeds", default="0", help="seeds, e.g. '1-5,9' (default 0)")
    p.add_argument("--slices", type=int, default=48, help="slices per case (default 48, 2.5 mm)")
    p.add_argument("--size", type=int, default=512,
                   help="in-plane size in pixels (default 512 at 0.7 mm); the 358 mm field of view stays, the pixels grow")
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
    p.add_argument("--residual", action="store_true", help="generator predicts a correction added to its input (not the paper; helps small models)")
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

    p = sub.add_parser("evaluate", help="MAE, PSNR, MS-SSIM (LPIPS with local weights) of sCECT and input vs reference CECT")
    p.add_argument("--pred", type=Path, help="sCECT volume of one case")
    p.add_argument("--input", type=Path, help="NCCT (input) volume of that case")
    p.add_argument("--reference", type=Path, help="real CECT volume of that case")
    p.add_argument("--cases", type=Path, help="CSV with columns case,pred,input,reference (instead of the three above)")
    p.add_argument("--output", type=Path, required=True, help="folder for metrics_per_case.csv, metrics.json, table2.md, box plots")
    p.add_argument("--window", default="350,50", help="evaluation window 'width,level' in HU (default mediastinal 350,50)")
    rng = p.add_mutually_exclusive_group()
    rng.add_argument("--slices", help="inclusive slice index range 'first:last' (e.g. aortic arch top to diaphragm)")
    rng.add_argument("--z-range-mm", help="inclusive physical z range 'lo:hi' in LPS mm")
    p.add_argument("--body-mask", help="'auto' (largest body region, holes filled) or a mask volume; MAE/PSNR only")
    p.add_argument("--input-label", default="NCCT", help="name of the input in the table (NCCT or VNC)")
    p.add_argument("--lpips-weights", type=Path, help="local AlexNet+LPIPS weights (.safetensors); without it LPIPS is skipped")
    p.add_argument("--sd", type=Path, help="the sCECT's SD map (synthesize --samples N): adds Spearman(SD, |error|), AUSE and a sparsification plot")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cnr", help="lesion CNR (paper definition) from ROI JSON on one or more volumes")
    p.add_argument("volumes", nargs="+", type=Path, help="volumes to measure, e.g. NCCT sCECT CECT")
    p.add_argument("--rois", type=Path, required=True, help="ROI JSON (phantom annotations or Slicer export)")
    p.add_argument("--names", help="comma-separated names for the volumes (default: file names)")
    p.add_argument("--sd", action="append", default=[], metavar="NAME=PATH",
                   help="SD map of the volume called NAME (synthesize --samples N): adds the CNR's uncertainty; repeatable")
    p.add_argument("--output", type=Path, help="folder for cnr_per_lesion.csv and cnr.json")
    p.set_defaults(func=cmd_cnr)

    p = sub.add_parser("demo", help="the main job on the bundled demo model: phantom case -> sCECT, figure, MAE/PSNR")
    p.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for volumes, ROIs and the PNG (default demo_output)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed, held out of training (default {DEMO_SEED})")
    _add_synthesis_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reader-study", help="blinded reader comparison: plan, status, analyze (simulate for pipeline checks)")
    rs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = rs.add_parser("plan", help="make the blinded, seeded session plan from a study file")
    q.add_argument("study", type=Path, help=f"study JSON (format {'synthetic-contrast-reader-study/1'})")
    q.add_argument("output", type=Path, help="new study folder: study.json, plan.json, later marks/")
    q = rs.add_parser("status", help="progress and washout warnings of every session")
    q.add_argument("study_dir", type=Path)
    q = rs.add_parser("analyze", help="detection (McNemar), conspicuity (Wilcoxon), JAFROC FOMs, plots")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--output", type=Path, help="report folder (default STUDY_DIR/analysis)")
    q.add_argument("--tolerance-mm", type=float, help="match distance (default: each lesion's short-axis radius)")
    q = rs.add_parser("simulate", help="fill all sessions with SIMULATED readers (pipeline check; marks are flagged)")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_reader_study)
    return parser


DEMO_SEED = 9001


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


def _synthesis_options(args, device: str | None = None):
    from .engine.inference import SynthesisOptions

    return SynthesisOptions(args.stride, args.blend, args.batch, args.precision, device or args.device, tile_overlap=args.tile_overlap,
                            samples=args.samples, seed=args.samples_seed)


def _synthesize_with_progress(volume, model, args):
    """Synthesis with a tqdm bar counting windows (hidden by --no-progress), or JSON progress lines."""
    from .engine.inference import synthesize_volume

    return synthesize_volume(volume, model, _synthesis_options(args), progress=_progress_callback(args))


def cmd_synthesize(args) -> int:
    from .engine.case import synthesize_case, uncertainty_path, write_case
    from .io.dicom_export import source_files_of
    from .engine.models import load_model
    from .io.reading import read_volume

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
    if args.progress_json:
        emit_event("started", input=str(args.input), output=str(out), model_id=model.card.model_id)
    findings = _report_findings(volume, model, args)
    case = synthesize_case(volume, model, _synthesis_options(args), findings, _progress_callback(args))
    for note in case.report.notes:
        print(f"note: {note}", file=sys.stderr)
        if args.progress_json:
            emit_event("warning", message=note)
    written = write_case(case, out, args.dicom_out, source_files_of(volume) if args.dicom_out else None, model)
    if args.progress_json:
        emit_event("done", windows=case.report.windows, stride=case.report.stride, device=case.report.device,
                   notes=case.report.notes, ood=case.ood_summary, **{k: str(v) for k, v in written.items()})
    if args.dicom_out:
        print(f"wrote DICOM series {args.dicom_out} (SeriesDescription 'SYNTHETIC CONTRAST - ...')"
              + (f" and its SD map {written['dicom_sd_output']}" if "dicom_sd_output" in written else ""))
    if case.sd is not None:
        print(f"wrote {uncertainty_path(out)} (SYNTHETIC uncertainty map: per-voxel SD in HU of {case.report.samples} samples)")
    warning = f"; {len(findings)} out-of-distribution finding(s)" if findings else ""
    print(f"wrote {out} (SYNTHETIC; model {model.card.model_id}, {case.report.windows} windows, stride {case.report.stride}, "
          f"{case.report.blend} blending, {case.report.device}{warning})")
    return EXIT_OK


def _report_findings(volume, model, args) -> list:
    """Out-of-distribution findings, one stderr line each (and one JSON event); --strict stops here."""
    from .engine.case import check_input, refuse_if_strict

    findings = check_input(volume, model)
    for finding in findings:
        print(finding.line(), file=sys.stderr)
    if args.progress_json:
        from .trust.ood import as_dicts

        emit_event("ood", findings=as_dicts(findings), checked=bool(model.card.input_statistics))
    refuse_if_strict(volume, findings, args.strict)
    return findings


def _progress_callback(args):
    """The engine's progress callback: JSON events (synthesize --progress-json), or a tqdm bar, or none."""
    from .engine.inference import resolve_device

    if getattr(args, "progress_json", False):
        return ProgressEvents(str(resolve_device(args.device))).progress
    if args.no_progress:
        return None
    from tqdm import tqdm

    bar = tqdm(total=None, unit="window", desc="synthesizing")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return progress


def cmd_batch(args) -> int:
    import os

    from tqdm import tqdm

    from .engine.batch import BatchRunner, discover_cases
    from .engine.models import load_model

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = args.device
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if device == "auto" and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    cases = discover_cases(args.input)
    model = load_model(args.model)
    runner = BatchRunner(args.output, model, _synthesis_options(args, device), dicom=args.dicom, rank=rank, world=world, strict=args.strict)
    mine = runner.shard(cases)
    desc = f"rank {rank}/{world}" if world > 1 else "cases"
    with tqdm(total=len(mine), unit="case", desc=desc, disable=args.no_progress, position=rank) as bar:
        def progress(status):
            bar.set_postfix_str(f"{status['case']}: {status['status']} {status.get('seconds', 0):.1f}s")
            bar.update(1)

        runner.say = lambda msg: bar.write(msg)
        results = runner.run(cases, progress)
    if world > 1:
        dist.barrier()
        if rank == 0:
            runner.write_manifest(cases)
        dist.destroy_process_group()
    failed = [r for r in results if r["status"] != "done"]
    for r in failed:
        print(f"error: {r['case']} ({r['input']}): {r['error']}", file=sys.stderr)
    print(f"{len(results) - len(failed)} of {len(results)} cases done; manifest {args.output / 'manifest.csv'}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_export_dicom(args) -> int:
    import SimpleITK as sitk

    from .io.dicom_export import export_dicom_series, on_source_grid, source_files_of
    from .engine.models import read_card
    from .io.reading import read_volume

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(args.synthetic))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        print(f"error: {args.synthetic}: cannot be read as an image", file=sys.stderr)
        return EXIT_FAILED
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    notes = meta.get("ITK_FileNotes", meta.get("descrip", ""))
    if not (notes.startswith("SYNTHETIC") or meta.get("SyntheticContrast.synthetic") == "true"):
        print(f"error: {args.synthetic}: carries no SYNTHETIC label; only volumes made by this tool are exported", file=sys.stderr)
        return EXIT_FAILED
    model_id, sha = meta.get("SyntheticContrast.model_id"), meta.get("SyntheticContrast.model_sha256")
    if sha is None:  # NIfTI keeps only an 80-byte description: the card supplies the full digest
        if args.model is None:
            print(f"error: {args.synthetic}: the header lacks the model's full sha256 (NIfTI); name the model with --model CARD", file=sys.stderr)
            return EXIT_USAGE
        card = read_card(args.model)
        if card.model_id not in notes or card.sha256[:12] not in notes:
            print(f"error: {args.synthetic} was not made by model {card.model_id} ({card.sha256[:12]}): its label says {notes!r}", file=sys.stderr)
            return EXIT_FAILED
        model_id, sha = card.model_id, card.sha256
    synthetic = read_volume(args.synthetic, check_hu=False)
    source = read_volume(args.source, series_uid=args.series)
    synthetic = on_source_grid(synthetic, source)  # refuses a different grid, with the figures
    files = export_dicom_series(synthetic, args.output, source_files_of(source), model_id, sha, args.series_number_offset)
    print(f"wrote {len(files)} slices to {args.output} (derived series, SeriesDescription 'SYNTHETIC CONTRAST - ...')")
    return EXIT_OK


def cmd_reader_study(args) -> int:
    from . import reader_study as rs

    if args.action == "plan":
        plan = rs.write_plan(args.study, args.output)
        readers = sorted({s["reader"] for s in plan["sessions"]})
        print(f"planned {len(plan['sessions'])} sessions for readers {', '.join(readers)} in {args.output} (seed {plan['seed']})")
    elif args.action == "status":
        for row in rs.study_status(args.study_dir):
            warn = f"  WARNING: {row['washout_warning']}" if row["washout_warning"] else ""
            print(f"reader {row['reader']:8s} session {row['session']} ({row['condition']:11s}) {row['done']:3d}/{row['total']} cases{warn}")
    elif args.action == "simulate":
        rs.simulate_readers(args.study_dir, args.seed)
        print(f"simulated readers filled every session of {args.study_dir} (marks flagged 'simulated')")
    else:
        out = args.output or args.study_dir / "analysis"
        summary = rs.analyze(args.study_dir, out, args.tolerance_mm)
        print(rs.summary_markdown(summary))
        print(f"reports in {out}")
    return EXIT_OK


def cmd_phantom(args) -> int:
    from .phantom import PhantomSpec, make_phantom
    from .measurement.rois import write_rois
    from .io.reading import write_volume

    # The anatomy is in millimetres: a smaller matrix must keep the field of view, or the body and its annotated
    # nodes would fall off the image.
    spec = PhantomSpec(size=args.size, slices=args.slices, pixel_mm=PhantomSpec.pixel_mm * PhantomSpec.size / args.size)
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
    from .engine.training import PairedVolume

    pairs = []
    for seed in seeds:
        case = make_phantom(seed, PhantomSpec(slices=slices))
        pairs.append(PairedVolume(f"phantom{seed:04d}", case.ncct.array, case.cect.array, tuple(case.ncct.spacing)))
    return pairs


def cmd_train(args) -> int:
    import dataclasses

    from .engine.training import TrainConfig, Trainer, load_pairs, read_pair_list, split_pairs

    cfg = TrainConfig.from_dict(json.loads(args.config.read_text())) if args.config else TrainConfig()
    gen = dataclasses.replace(cfg.generator, **{k: v for k, v in (("ngf", args.ngf), ("levels", args.levels), ("dropout", args.dropout), ("residual", args.residual or None)) if v is not None})
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
    try:
        trainer.fit(train, val)
    finally:
        trainer.close()
    if trainer.rank == 0:
        print(f"model card: {args.output / (cfg.model_id + '.json')}")
    return EXIT_OK


def _range(text: str | None, cast=int):
    if not text:
        return None
    lo, hi = text.split(":")
    return cast(lo), cast(hi)


def cmd_evaluate(args) -> int:
    from .measurement.evaluation import EvaluationSettings, evaluate_case, lpips_metric, table2_markdown, write_reports
    from .io.reading import read_volume

    width, level = (float(v) for v in args.window.split(","))
    settings = EvaluationSettings((width, level), _range(args.slices), _range(args.z_range_mm, float), args.body_mask,
                                  str(args.lpips_weights) if args.lpips_weights else None)
    lpips = lpips_metric(settings)
    if args.cases:
        import csv

        with open(args.cases, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        base = args.cases.parent
        cases = [(r["case"], base / r["pred"], base / r["input"], base / r["reference"], base / r["sd"] if r.get("sd") else None) for r in rows]
    elif args.pred and args.input and args.reference:
        cases = [(args.input.name.split(".")[0], args.pred, args.input, args.reference, args.sd)]
    else:
        print("error: give --pred, --input and --reference, or --cases CSV", file=sys.stderr)
        return EXIT_USAGE
    results = []
    for name, pred, src, ref, sd in cases:
        res = evaluate_case(read_volume(pred), read_volume(src), read_volume(ref), settings, lpips,
                            read_volume(sd, check_hu=False) if sd else None)
        res["case"] = name
        results.append(res)
    summary = write_reports(results, args.output, args.input_label)
    print(table2_markdown(summary, args.input_label))
    if "calibration" in summary:
        c = summary["calibration"]
        print(f"uncertainty: Spearman(SD, |error|) median {c['spearman_rho']['median']:.3f}, AUSE median {c['ause_hu']['median']:.2f} HU "
              f"({c['ause_relative']['median']:.1%} of the MAE); see uncertainty_calibration.csv and sparsification.png")
    if "lpips_note" in results[0]:
        print(results[0]["lpips_note"])
    print(f"reports in {args.output}")
    return EXIT_OK


def cnr_report(rows, summary) -> str:
    lines = [f"{'lesion':10s} {'volume':12s} {'CNR':>7s} {'noise':>7s} {'lesion HU':>10s} {'DTA HU':>8s}  error"]
    for r in rows:
        plus = f" +-{r['cnr_uncertainty']:.2f}" if "cnr_uncertainty" in r else ""
        lines.append(f"{r['lesion']:10s} {r['volume']:12s} {r['cnr']:7.2f}{plus} {r['noise']:7.2f} "
                     f"{r.get('lesion_mean', float('nan')):10.1f} {r.get('dta_mean', float('nan')):8.1f}  {r['error']}")
    lines.append("")
    for name, s in summary["volumes"].items():
        c, n = s["cnr"], s["noise"]
        lines.append(f"{name}: CNR median {c['median']:.2f} (IQR {c['q1']:.2f}-{c['q3']:.2f}), noise {n['median']:.1f} HU, n={c['n']}")
    for cmp in summary["comparisons"]:
        if cmp["measure"] == "cnr":
            lines.append(f"{cmp['a']} vs {cmp['b']} CNR: {cmp['test'] or cmp.get('note')} p={cmp['p']:.3g} (n={cmp['n']})")
    return "\n".join(lines)


def cmd_cnr(args) -> int:
    from .measurement.cnr import measure_cnr, summarize_cnr
    from .fileio import atomic_write_csv, atomic_write_text
    from .measurement.rois import read_rois
    from .io.reading import read_volume

    names = args.names.split(",") if args.names else [v.name.split(".")[0] for v in args.volumes]
    if len(names) != len(args.volumes):
        print(f"error: {len(names)} names for {len(args.volumes)} volumes", file=sys.stderr)
        return EXIT_USAGE
    lesions = read_rois(args.rois)
    volumes = {n: read_volume(v, check_hu=False) for n, v in zip(names, args.volumes)}
    sd_maps = {}
    for item in args.sd:
        name, _, path = item.partition("=")
        if name not in volumes or not path:
            print(f"error: --sd {item!r}: give NAME=PATH with NAME one of {', '.join(volumes)}", file=sys.stderr)
            return EXIT_USAGE
        sd_maps[name] = read_volume(path, check_hu=False)
    rows = measure_cnr(volumes, lesions, sd_maps)
    summary = summarize_cnr(rows)
    print(cnr_report(rows, summary))
    if args.output:
        atomic_write_csv(args.output / "cnr_per_lesion.csv", rows)
        atomic_write_text(args.output / "cnr.json", json.dumps({"rows": rows, "summary": summary}, indent=2, default=float) + "\n")
        print(f"wrote {args.output / 'cnr_per_lesion.csv'}")
    failed = sum(1 for r in rows if r["error"])
    return EXIT_FAILED if failed == len(rows) else EXIT_OK


def cmd_demo(args) -> int:
    from .measurement import metrics
    from .measurement.cnr import measure_cnr, summarize_cnr
    from .measurement.figures import side_by_side
    from .engine.models import load_model
    from .phantom import make_phantom
    from .measurement.rois import parse_rois, write_rois
    from .io.reading import write_volume

    model = load_model(args.model)
    print(f"model: {model.card.model_id} - {model.card.intended_use}")
    case = make_phantom(args.seed)
    scect, report = _synthesize_with_progress(case.ncct, model, args)
    out, name = args.output, f"phantom{args.seed:04d}"
    write_volume(case.ncct, out / f"{name}_ncct.nii.gz")
    write_volume(scect, out / f"{name}_sCECT_synthetic.nii.gz")
    write_volume(case.cect, out / f"{name}_cect.nii.gz")
    write_rois(case.annotations, out / f"{name}_rois.json")
    lesions = parse_rois(case.annotations)
    node = max(case.annotations["lesions"], key=lambda l: l["short_axis_mm"])
    k = int(round(case.ncct.physical_to_index(node["center"])[2]))
    figure = side_by_side(
        [case.ncct.array[k], scect.array[k], case.cect.array[k]],
        ["NCCT", "sCECT (SYNTHETIC)", "CECT"], out / f"{name}_side_by_side.png",
        f"phantom seed {args.seed}, slice {k}: node {node['id']} ({node['short_axis_mm']:.0f} mm)",
    )
    print(f"\n{'vs CECT, W350/L50':22s} {'MAE (HU)':>9s} {'PSNR (dB)':>10s}")
    for label, vol in (("NCCT", case.ncct), ("sCECT (synthetic)", scect)):
        print(f"{label:22s} {metrics.mae(vol.array, case.cect.array):9.2f} {metrics.psnr(vol.array, case.cect.array):10.2f}")
    summary = summarize_cnr(measure_cnr({"NCCT": case.ncct, "sCECT": scect, "CECT": case.cect}, lesions))
    print("\nlymph-node CNR, median: " + ", ".join(f"{n} {s['cnr']['median']:.2f}" for n, s in summary["volumes"].items()))
    print(f"\nwrote {out}/ ({name}_ncct, _sCECT_synthetic, _cect .nii.gz, _rois.json) and {figure.name}")
    print("the demo model was trained on procedural phantoms only: NOT FOR DIAGNOSIS")
    return EXIT_OK


def main(argv=None) -> int:
    from .errors import OutOfDistributionError, SynthesisCancelled, SyntheticContrastError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    as_json = getattr(args, "progress_json", False)
    try:
        return args.func(args)
    except (SynthesisCancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        if as_json:
            emit_event("cancelled")
        return EXIT_CANCELLED
    except OutOfDistributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if as_json:
            emit_event("error", message=str(exc), out_of_distribution=True)
        return EXIT_OUT_OF_DISTRIBUTION
    except OSError as exc:  # a folder that cannot be made or read outside any one case: a message, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        if as_json:
            emit_event("error", message=f"{where}{exc.strerror or exc}")
        return EXIT_FAILED
    except (SyntheticContrastError, ValueError) as exc:  # ValueError: option combinations the engine refuses (fp16 on CPU)
        print(f"error: {exc}", file=sys.stderr)
        if as_json:
            emit_event("error", message=str(exc))
        return EXIT_FAILED if isinstance(exc, SyntheticContrastError) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
