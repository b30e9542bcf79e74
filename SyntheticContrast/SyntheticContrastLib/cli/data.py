"""Data verbs: training pairs from a DICOM archive, and the procedural paired phantom."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, seed_list


def register(sub) -> None:
    p = sub.add_parser("pairs", help="walk a DICOM archive and write the NCCT/CECT training pairs CSV that 'train --pairs' reads")
    p.add_argument("archive", type=Path, help="folder of DICOM studies (any depth)")
    p.add_argument("output", type=Path, help="pairs CSV (input,target,study_uid,reason,...); <stem>_unpaired.csv goes beside it")
    p.add_argument("--review", action="store_true", help="also write <stem>_review.html: a thumbnail, class and reason per series")
    p.add_argument("--min-overlap", type=float, default=0.8, help="z overlap that pairs series without a shared frame of reference (default 0.8)")
    p.add_argument("--phase", choices=["arterial", "venous", "delayed"], help="pair only CECT series of this phase")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("phantom", help="write procedural paired chest phantom cases (NCCT, CECT, ROI JSON)")
    p.add_argument("output", type=Path, help="folder to write <case>_ncct.nii.gz, <case>_cect.nii.gz, <case>_rois.json")
    p.add_argument("--dicom", action="store_true", help="write each case as a DICOM study instead: <case>/ncct/ and "
                                                        "<case>/cect/ series in one study and frame of reference, for "
                                                        "'pairs', 'serve' and Slicer's DICOM path")
    p.add_argument("--seeds", default="0", help="seeds, e.g. '1-5,9' (default 0)")
    p.add_argument("--slices", type=int, default=48, help="slices per case (default 48, 2.5 mm)")
    p.add_argument("--size", type=int, default=512,
                   help="in-plane size in pixels (default 512 at 0.7 mm); the 358 mm field of view stays, the pixels grow")
    p.set_defaults(func=cmd_phantom)



def cmd_phantom(args) -> int:
    from ..phantom import PhantomSpec, make_phantom
    from ..measurement.rois import write_rois
    from ..io.reading import write_volume

    # The anatomy is in millimetres: a smaller matrix must keep the field of view, or the body and its annotated
    # nodes would fall off the image.
    spec = PhantomSpec(size=args.size, slices=args.slices, pixel_mm=PhantomSpec.pixel_mm * PhantomSpec.size / args.size)
    for seed in seed_list(args.seeds):
        case = make_phantom(seed, spec)
        name = f"phantom{seed:04d}"
        if args.dicom:
            from ..io.dicom_export import write_phantom_study

            write_phantom_study(case, args.output / name)
        else:
            write_volume(case.ncct, args.output / f"{name}_ncct.nii.gz")
            write_volume(case.cect, args.output / f"{name}_cect.nii.gz")
        write_rois(case.annotations, args.output / f"{name}_rois.json")
        print(f"wrote {name}: {len(case.annotations['lesions'])} lymph nodes")
    return EXIT_OK


def phantom_pairs(seeds, slices: int = 48):
    from ..phantom import PhantomSpec, make_phantom
    from ..engine.training import PairedVolume

    pairs = []
    for seed in seeds:
        case = make_phantom(seed, PhantomSpec(slices=slices))
        pairs.append(PairedVolume(f"phantom{seed:04d}", case.ncct.array, case.cect.array, tuple(case.ncct.spacing)))
    return pairs


def cmd_pairs(args) -> int:
    from ..io.pairing import write_pairs
    from .progress import progress_bar

    with progress_bar(unit="series", desc="classifying", disable=args.no_progress) as bar:
        def progress(done, total):
            bar.update_to(done, total)

        pairs, unpaired = write_pairs(args.archive, args.output, args.review, args.min_overlap, args.phase, progress)
    print(f"{len(pairs)} pair(s) in {args.output}; {len(unpaired)} series not paired, each with its reason, in "
          f"{args.output.with_name(args.output.stem + '_unpaired.csv')}")
    if args.review:
        print(f"review page: {args.output.with_name(args.output.stem + '_review.html')}")
    print("NCCT and CECT are rarely on one grid: train with 'train --pairs CSV --register'")
    return EXIT_OK
