"""Make a `train` run's model the bundled demo model: its weights and card go into engine/bundled_models, with the
demo's intended use, training data and the departures from the paper written into the card.

    python scripts/bundle_demo_model.py RUN/demo_phantom_small.json [--parent FIRST_RUN/demo_phantom_small.json]

A fine-tuned run (`train --init-from`) names the model it began from; its reproduce line lists every run of the
chain, first to last. --parent supplies the first run's card where the fine-tuned card does not hold the chain.

The run must be a phantom run (its card says which seeds); the card's own training record, statistics and sha256
are kept as `train` wrote them, so `models verify` and the reproduce command still hold. Both files are written
atomically; the previous demo model is replaced (git keeps it).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SyntheticContrast"))

from SyntheticContrastLib.cli.training import started_from  # noqa: E402
from SyntheticContrastLib.engine.models import BUNDLED_MODELS_DIR, load_model, read_card  # noqa: E402
from SyntheticContrastLib.fileio import atomic_path, atomic_write_text  # noqa: E402

INTENDED_USE = ("DEMONSTRATION ONLY - NOT FOR DIAGNOSIS. Trained on procedural chest phantoms, never on patient images; "
                "it exists so the tool's main job, tests and tutorials run out of the box. Its output is a synthetic image "
                "and must never be read as an acquired contrast-enhanced CT.")


def deviations(config: dict) -> str:
    """The card's departures from the paper, read from the run's own config so that they cannot drift from it."""
    g = config["generator"]
    norm = ("no InstanceNorm, so a voxel depends on its receptive field and not on its tile's statistics"
            if g.get("norm", "instance") == "none" else "InstanceNorm, as the paper")
    lowpass = (f"block-mean L1 x{config['lowpass_l1_weight']:g} over {'x'.join(map(str, config['lowpass_block']))} voxels "
               "beside the paper's voxel L1" if config.get("lowpass_l1_weight") else "the paper's voxel L1 alone")
    return (f"small generator (ngf {g['ngf']}, {g['levels']} levels, {'residual' if g['residual'] else 'direct'} output, "
            f"dropout {g['dropout']:g}, {norm}), {config['crop']}-px in-plane crops centred on body voxels (inference "
            f"tiles at {config['crop']} px), {lowpass}, lr {config['lr']:g} decayed x{config['lr_decay_factor']:g} after "
            f"epoch {config['lr_decay_epoch']}, {config['epochs']} epochs, discriminator ndf {config['discriminator_ndf']}; "
            "loss weights, label smoothing, Adam betas and shift augmentation as in the paper")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path, help="the run's model card (RUN/<model_id>.json)")
    parser.add_argument("--parent", type=Path, help="the card the run was fine-tuned from, when its card lacks the chain")
    parser.add_argument("--into", type=Path, default=BUNDLED_MODELS_DIR, help="the bundled models' folder (default: the package's)")
    args = parser.parse_args(argv)
    model = load_model(args.card)  # checks the weights' sha256 before anything is copied
    data = json.loads(args.card.read_text())
    record = data["training"]
    seeds = record.get("data", {}).get("phantom_seeds")
    if not seeds:
        parser.error(f"{args.card} was not trained on phantoms; the bundled demo model must be reproducible here")
    split = record["split"]
    data["intended_use"] = INTENDED_USE
    data["training_data"] = (f"Procedural paired NCCT/CECT chest phantoms (SyntheticContrastLib.phantom), seeds {seeds}, "
                             f"512x512x{record['data']['phantom_slices']} at 0.7x0.7x2.5 mm; {len(split['train']['pairs'])} "
                             f"for training, {len(split['validation']['pairs'])} for validation (by patient, seed "
                             f"{split['seed']}). Held-out seeds used by 'synthetic-contrast demo' and the evaluation: 9001-9005.")
    begun = record["config"].get("init_from")
    if begun and "started_from" not in record:
        if not args.parent:
            parser.error(f"{args.card} was fine-tuned from {begun['model_id']}; give its card with --parent")
        parent = read_card(args.parent)
        if parent.sha256 != begun["sha256"]:
            parser.error(f"{args.parent} is not the model {args.card} began from (sha256 {parent.sha256[:16]}... "
                         f"against {begun['sha256'][:16]}...)")
        record["started_from"] = started_from(parent)
    chain, link = [record["command"]], record.get("started_from")
    while link:
        chain.insert(0, f"{link['command']}  # -> {link['model_id']} sha256 {link['sha256'][:16]}...")
        link = link.get("started_from")
    record["reproduce"] = chain[0] if len(chain) == 1 else chain
    record["deviations_from_paper"] = deviations(record["config"])
    record["stride_choice"] = f"trained and validated with the card's default stride {data['default_stride']}"
    args.into.mkdir(parents=True, exist_ok=True)
    out = args.into / args.card.name
    weights = args.into / data["weights_file"]
    with atomic_path(weights) as tmp:
        shutil.copyfile(args.card.parent / data["weights_file"], tmp)
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    load_model(out)  # the bundled copy verifies as a model
    print(f"bundled {model.card.model_id} (sha256 {data['sha256'][:16]}...) as {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
