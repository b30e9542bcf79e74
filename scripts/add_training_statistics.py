"""Add the training inputs' statistics (for out-of-distribution checks) and their targets' enhancement statistics
(for the output's plausibility checks) to an existing model card.

Cards written by `synthetic-contrast train` have them already; this is for cards made before, such as the bundled
demo model, whose training pairs are reproducible phantoms:

    python scripts/add_training_statistics.py SyntheticContrast/SyntheticContrastLib/engine/bundled_models/demo_phantom_small.json --phantom-seeds 1000-1015

The weights and their sha256 are not touched; the card is rewritten atomically.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SyntheticContrast"))

from SyntheticContrastLib.trust import ood, plausibility  # noqa: E402
from SyntheticContrastLib.cli.common import seed_list  # noqa: E402
from SyntheticContrastLib.fileio import atomic_write_text  # noqa: E402
from SyntheticContrastLib.engine.models import read_card  # noqa: E402
from SyntheticContrastLib.phantom import PhantomSpec, make_phantom  # noqa: E402
from SyntheticContrastLib.io.orientation import AxialLayout  # noqa: E402
from SyntheticContrastLib.io.reading import read_volume  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--phantom-seeds", help="the phantom seeds the model was trained on, e.g. '1000-1015'")
    source.add_argument("--inputs", type=Path, nargs="+", help="the training input volumes (NCCT)")
    parser.add_argument("--targets", type=Path, nargs="+", help="with --inputs: their CECT targets on the same grids, in "
                                                                 "the same order (without them no enhancement statistics)")
    parser.add_argument("--phantom-slices", type=int, default=48)
    args = parser.parse_args(argv)
    card = read_card(args.card)  # refuse anything that is not a valid card before rewriting it
    if args.phantom_seeds:
        cases = [make_phantom(seed, PhantomSpec(slices=args.phantom_slices)) for seed in seed_list(args.phantom_seeds)]
        pairs = [(c.ncct, c.cect) for c in cases]
    else:
        if args.targets and len(args.targets) != len(args.inputs):
            parser.error(f"{len(args.inputs)} inputs but {len(args.targets)} targets")
        pairs = [(read_volume(i), read_volume(t) if args.targets else None) for i, t in zip(args.inputs, args.targets or args.inputs)]
    data = json.loads(args.card.read_text())
    data["input_statistics"] = ood.training_statistics([ncct for ncct, _ in pairs])
    if all(cect is not None for _, cect in pairs):
        axial = []
        for ncct, cect in pairs:
            layout = AxialLayout.of(ncct.direction)
            axial.append((layout.to_axial(ncct.array), layout.to_axial(cect.array), layout.spacing(ncct.spacing)))
        data["enhancement_statistics"] = plausibility.training_statistics(axial, card.encoding.output_range_hu)
    atomic_write_text(args.card, json.dumps(data, indent=2) + "\n")
    stats = data["input_statistics"]
    print(f"{args.card}: statistics of {stats['volumes']} training inputs; HU distance threshold {stats['hu_distance_threshold']:.2f}")
    for key, (lo, hi) in stats["ranges"].items():
        print(f"  {key}: {lo:.4g} - {hi:.4g}")
    print(f"  blood_pool_hu: {stats['blood_pool_hu']}")
    for name, bounds in data.get("enhancement_statistics", {}).get("classes", {}).items():
        print(f"  enhancement of {name}: median {bounds['median'][0]:+.1f} to {bounds['median'][1]:+.1f} HU, "
              f"share > 100 HU up to {bounds['share_above_100'][1]:.2%}, distance threshold {bounds.get('distance_threshold', float('nan')):.2f} HU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
