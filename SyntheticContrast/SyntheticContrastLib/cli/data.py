"""Data verbs: the procedural paired phantom, written as cases or given to training as pairs."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, seed_list

def register(sub) -> None:
    p = sub.add_parser("phantom", help="write procedural paired chest phantom cases (NCCT, CECT, ROI JSON)")
    p.add_argument("output", type=Path, help="folder to write <case>_ncct.nii.gz, <case>_cect.nii.gz, <case>_rois.json")
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
