"""Verbs that make a synthetic image: synthesize, export-dicom (a derived series beside its source), demo."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_strict_option, add_synthesis_options, emit_event,
                     progress_callback, report_findings, synthesis_options, synthesize_reporting, synthesize_with_progress, synthetic_output_path)

DEMO_SEED = 9001


def register(sub) -> None:
    p = sub.add_parser("synthesize", help="make a synthetic contrast-enhanced CT from one NCCT volume")
    p.add_argument("input", type=Path, help="NCCT volume: NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument("output", type=Path, help="output file (.nii.gz/.nii/.nrrd/.mha) whose name says 'synthetic', or a folder")
    add_synthesis_options(p)
    p.add_argument("--series", default=None, help="SeriesInstanceUID to use when a DICOM folder holds several series")
    p.add_argument("--dicom-out", type=Path, help="also write the sCECT as a derived DICOM series into this new folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_strict_option(p)
    p.add_argument("--progress-json", action="store_true",
                   help="print one JSON object per line on stdout (progress, notes, result, error) for a calling program; hides the bar")
    p.set_defaults(func=cmd_synthesize)


    p = sub.add_parser("export-dicom", help="write a synthetic volume as a derived DICOM series beside its source series")
    p.add_argument("synthetic", type=Path, help="the sCECT volume (NIfTI/NRRD/MHA) made by this tool")
    p.add_argument("source", type=Path, help="the source NCCT DICOM series folder (patient, study, frame of reference)")
    p.add_argument("output", type=Path, help="new, empty folder for the synthetic series")
    p.add_argument("--series", default=None, help="SeriesInstanceUID in the source folder if it holds several")
    p.add_argument("--series-number-offset", type=int, default=1000)
    p.add_argument("--model", type=Path, help="model card, needed only for a NIfTI without its JSON sidecar (a NIfTI header "
                                              "cannot hold the full sha256)")
    p.set_defaults(func=cmd_export_dicom)


    p = sub.add_parser("demo", help="the main job on the bundled demo model: phantom case -> sCECT, figure, MAE/PSNR")
    p.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for volumes, ROIs and the PNG (default demo_output)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed, held out of training (default {DEMO_SEED})")
    add_synthesis_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_demo)



def cmd_synthesize(args) -> int:
    from ..engine.case import uncertainty_path, write_case
    from ..io.dicom_export import check_export, source_files_of
    from ..engine.models import load_model
    from ..io.reading import read_volume

    out = synthetic_output_path(args.input, args.output)
    if "synthetic" not in out.name.lower():
        print(f"error: output name {out.name!r} must contain 'synthetic' so the result is never taken for a real scan, "
              f"e.g. {out.name.split('.')[0]}_synthetic.nii.gz", file=sys.stderr)
        return EXIT_USAGE
    if out.resolve() == args.input.resolve():
        print("error: output would overwrite the input", file=sys.stderr)
        return EXIT_USAGE
    from ..engine.devices import resolve_device

    resolve_device(args.device)  # a device this machine lacks is refused before any reading
    model = load_model(args.model)
    volume = read_volume(args.input, series_uid=args.series)
    if args.dicom_out:
        check_export(args.dicom_out, source_files_of(volume))  # a refusal now, not after the synthesis time
    if args.progress_json:
        emit_event("started", input=str(args.input), output=str(out), model_id=model.card.model_id)
    findings = report_findings(volume, model, args)
    from ..engine.inference import samples_note

    early = samples_note(model.generator, args.samples)
    if early:  # before the N-fold run, not after it
        print(f"note: {early}", file=sys.stderr)
        if args.progress_json:
            emit_event("warning", message=early)
    case = synthesize_reporting(volume, model, args, findings, progress_callback(args))
    for note in case.report.notes:
        if note == early:
            continue
        print(f"note: {note}", file=sys.stderr)
        if args.progress_json:
            emit_event("warning", message=note)
    written = write_case(case, out, args.dicom_out, source_files_of(volume) if args.dicom_out else None, model,
                         plausibility_map=args.plausibility_map)
    if args.progress_json:
        emit_event("done", windows=case.report.windows, stride=case.report.stride, device=case.report.device,
                   precision=case.report.precision, memory=case.report.memory, peak_device_mib=case.report.peak_device_mib,
                   notes=case.report.notes, ood=case.ood_summary,
                   plausibility=case.plausibility_summary, **{k: str(v) for k, v in written.items()})
    # With --progress-json, stdout is for the calling program: JSON lines only; the human summary goes to stderr.
    say = (lambda text: print(text, file=sys.stderr)) if args.progress_json else print
    if args.dicom_out:
        say(f"wrote DICOM series {args.dicom_out} (SeriesDescription 'SYNTHETIC CONTRAST - ...')"
            + (f" and its SD map {written['dicom_sd_output']}" if "dicom_sd_output" in written else ""))
    if case.sd is not None:
        say(f"wrote {uncertainty_path(out)} (SYNTHETIC uncertainty map: per-voxel SD in HU of {case.report.samples} samples)")
    if "plausibility_map" in written:
        say(f"wrote {written['plausibility_map']} (SYNTHETIC plausibility violation map, labels)")
    warning = (f"; {len(findings)} out-of-distribution finding(s)" if findings else "") + (
        f"; {len(case.plausibility)} implausible-enhancement finding(s)" if case.plausibility else "")
    report = case.report
    tiles = report.windows // max(1, report.z_positions)
    layout = f" ({report.z_positions} z-positions x {tiles} in-plane tiles)" if tiles > 1 else ""
    passes = f" per pass, {report.samples} passes" if report.samples > 1 else ""
    say(f"wrote {out} (SYNTHETIC; model {model.card.model_id}, {report.windows} windows{layout}{passes}, stride {report.stride}, "
        f"{case.report.blend} blending, {case.report.device}{warning})")
    return EXIT_OK


def cmd_export_dicom(args) -> int:
    from ..io.dicom_export import export_dicom_series, on_source_grid, source_files_of
    from ..engine.models import read_card
    from ..engine.case import OOD_KEY, PLAUSIBILITY_KEY
    from ..io.reading import read_volume, synthetic_provenance

    provenance = synthetic_provenance(args.synthetic)
    if provenance is None:
        print(f"error: {args.synthetic}: carries no SYNTHETIC label; only volumes made by this tool are exported", file=sys.stderr)
        return EXIT_FAILED
    notes = provenance["label"]
    model_id, sha = provenance["model_id"], provenance["sha256"]
    if sha is None:  # NIfTI keeps only an 80-byte description: the card supplies the full digest
        if args.model is None:
            print(f"error: {args.synthetic}: the header lacks the model's full sha256 (NIfTI) and no sidecar written with this "
                  "file is beside it; name the model with --model CARD", file=sys.stderr)
            return EXIT_USAGE
        card = read_card(args.model)
        if card.model_id not in notes or card.sha256[:12] not in notes:
            print(f"error: {args.synthetic} was not made by model {card.model_id} ({card.sha256[:12]}): its label says {notes!r}", file=sys.stderr)
            return EXIT_FAILED
        model_id, sha = card.model_id, card.sha256
    synthetic = read_volume(args.synthetic, check_hu=False)
    source = read_volume(args.source, series_uid=args.series)
    synthetic = on_source_grid(synthetic, source)  # refuses a different grid, with the figures
    sidecar = provenance.get("sidecar") or {}
    findings = sidecar.get("ood") or synthetic.metadata.get(OOD_KEY, "")
    implausible = sidecar.get("plausibility") or synthetic.metadata.get(PLAUSIBILITY_KEY, "")
    files = export_dicom_series(synthetic, args.output, source_files_of(source), model_id, sha, args.series_number_offset,
                                findings=findings, plausibility=implausible)
    print(f"wrote {len(files)} slices to {args.output} (derived series, SeriesDescription 'SYNTHETIC CONTRAST - ...')")
    return EXIT_OK


def cmd_demo(args) -> int:
    from ..measurement import metrics
    from ..measurement.cnr import measure_cnr, summarize_cnr
    from ..measurement.figures import side_by_side
    from ..engine.models import load_model
    from ..phantom import make_phantom
    from ..measurement.rois import parse_rois, write_rois
    from ..io.reading import write_volume

    model = load_model(args.model)
    print(f"model: {model.card.model_id} - {model.card.intended_use}")
    case = make_phantom(args.seed)
    scect, report = synthesize_with_progress(case.ncct, model, args)
    from ..trust import plausibility

    statistics = model.card.enhancement_statistics
    implausible = plausibility.check(plausibility.measure(case.ncct, scect, model.card.encoding.output_range_hu, statistics), statistics)
    for finding in implausible:  # the main job shows the output check as any synthesis does
        print(finding.line(), file=sys.stderr)
    # Said either way: silence would not tell a new user that the output was checked at all.
    print(f"output check: {plausibility.summary(implausible, statistics) if implausible else 'no implausible enhancement'} "
          f"({'physics and the training targets' if statistics else 'physics only'}, per tissue class)")
    out, name = args.output, f"phantom{args.seed:04d}"
    write_volume(case.ncct, out / f"{name}_ncct.nii.gz")
    write_volume(scect, out / f"{name}_sCECT_synthetic.nii.gz")
    write_volume(case.cect, out / f"{name}_cect.nii.gz")
    write_rois(case.annotations, out / f"{name}_rois.json")
    lesions = parse_rois(case.annotations)
    node = max(case.annotations["lesions"], key=lambda l: l["short_axis_mm"])
    i, j, k = (float(v) for v in case.ncct.physical_to_index(node["center"]))
    k = int(round(k))
    pixel_mm = float(case.ncct.spacing[0])
    figure = side_by_side(
        [case.ncct.array[k], scect.array[k], case.cect.array[k]],
        ["NCCT", "sCECT (SYNTHETIC)", "CECT"], out / f"{name}_side_by_side.png",
        f"phantom seed {args.seed}, slice {k}: node {node['id']} ({node['short_axis_mm']:.0f} mm)",
        pixel_mm=pixel_mm, marks=[(j, i, 0.75 * node["short_axis_mm"] / pixel_mm + 4, node["id"])],
    )
    print(f"\n{'vs CECT, W350/L50':22s} {'MAE (HU)':>9s} {'PSNR (dB)':>10s}")
    for label, vol in (("NCCT", case.ncct), ("sCECT (synthetic)", scect)):
        print(f"{label:22s} {metrics.mae(vol.array, case.cect.array):9.2f} {metrics.psnr(vol.array, case.cect.array):10.2f}")
    summary = summarize_cnr(measure_cnr({"NCCT": case.ncct, "sCECT": scect, "CECT": case.cect}, lesions))
    print("\nlymph-node CNR, median: " + ", ".join(f"{n} {s['cnr']['median']:.2f}" for n, s in summary["volumes"].items()))
    print(f"\nwrote {out}/ ({name}_ncct, _sCECT_synthetic, _cect .nii.gz, _rois.json) and {figure.name}")
    print("the demo model was trained on procedural phantoms only: NOT FOR DIAGNOSIS")
    return EXIT_OK
