"""Training and evaluation verbs: train, evaluate (Table 2 metrics), cnr (lymph-node contrast-to-noise)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, seed_list
from .data import phantom_pairs


def register(sub) -> None:
    p = sub.add_parser("train", help="train a generator (paper recipe by default); torchrun for several GPUs/nodes")
    src = p.add_mutually_exclusive_group()  # one is required, except with --resume, which reads the run's own
    src.add_argument("--pairs", type=Path, help="CSV with columns input,target, or folder of <case>_ncct.*/<case>_cect.*")
    src.add_argument("--phantom-seeds", help="train on generated phantom cases with these seeds, e.g. '1000-1015'")
    p.add_argument("--output", type=Path, required=True, help="folder for checkpoint, log, samples and the model card")
    p.add_argument("--config", type=Path, help="JSON with TrainConfig fields (anything below overrides it)")
    # Defaults are TrainConfig's (the paper's); they are written out here so that --help needs no torch import, and
    # tests/test_cli_verbs.py checks each against TrainConfig.
    p.add_argument("--epochs", type=int, help="epochs to train (default 20)")
    p.add_argument("--ngf", type=int, help="generator base width (default 64, the paper's)")
    p.add_argument("--levels", type=int, help="U-Net levels (default 9, the paper's for 512 px)")
    p.add_argument("--dropout", type=float, help="decoder dropout of the innermost 3 levels (default 0.5, pix2pix)")
    p.add_argument("--residual", action="store_true", help="generator predicts a correction added to its input (not the paper; helps small models)")
    p.add_argument("--norm", choices=["instance", "none"], help="generator feature normalisation (default instance, the "
                                                                "paper's; none keeps each tile's output free of its neighbours' content)")
    p.add_argument("--ndf", type=int, help="discriminator base width (default 64, the paper's)")
    p.add_argument("--crop", type=int, help="in-plane training crop in px (default: whole slices)")
    p.add_argument("--samples-per-volume", type=int, help="random windows drawn from each pair per epoch (default 8)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 0.0002)")
    p.add_argument("--lowpass-l1", type=float, metavar="WEIGHT",
                   help="weight of an L1 loss between 2x8x8-voxel block means of output and target (default 0.0: the paper "
                        "has none); the voxel L1 hardly sees offsets of a few HU under the targets' noise, this does")
    p.add_argument("--init-from", metavar="MODEL", help="fine-tune: start from this model's generator (store name or "
                                                        "card) instead of random weights; its network and windows are used")
    p.add_argument("--lr-decay-epoch", type=int, help="the epoch after which the learning rate drops x0.1, once (default 10)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="training precision (default fp32)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--seed", type=int, help="seed of the split, the windows and the weights (default 0)")
    p.add_argument("--model-id", help="the model card's id and file name (default sct-model)")
    p.add_argument("--default-stride", type=int, help="the card's sliding-window stride in slices (default 10)")
    p.add_argument("--register", action="store_true", help="rigidly register each target to its input first (SimpleITK)")
    p.add_argument("--sample-every", type=int, help="write a sample PNG (NCCT, sCECT, CECT) every N epochs (default 5)")
    p.add_argument("--val-every", type=int, help="validate every N epochs, and after the last (default 1)")
    p.add_argument("--val-max-cases", type=int, help="validate on at most K pairs (default 0: all)")
    p.add_argument("--val-full", action="store_true", help="validate on whole volumes (default: each pair's central "
                                                          "slab, two windows deep and two crops wide, the same every epoch)")
    p.add_argument("--val-pairs", type=Path, help="validation pairs (CSV or folder, as --pairs) instead of a split of "
                                                 "--pairs; no patient may be in both")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt exactly, with the run's own "
                                                         "settings (OUTPUT/config.json); only --epochs, --device, --val-every "
                                                         "and --sample-every may change")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an OUTPUT that holds one (refused without it)")
    p.add_argument("--phantom-slices", type=int, default=48, help="slices of each phantom case (default 48)")
    p.add_argument("--install", metavar="NAME", help="install the trained model into your model store under NAME")
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
    p.add_argument("volumes", nargs="*", type=Path, help="volumes to measure, e.g. NCCT sCECT CECT")
    p.add_argument("--rois", type=Path, help="ROI JSON (phantom annotations or Slicer export)")
    p.add_argument("--cases", type=Path, help="a study instead: CSV with columns case,rois and one column per volume "
                                              "(such as NCCT,sCECT,CECT); pooled and per-case tables, tests across cases "
                                              "and a figure go to --output")
    p.add_argument("--names", help="comma-separated names for the volumes (default: file names)")
    p.add_argument("--sd", action="append", default=[], metavar="NAME=PATH",
                   help="SD map of the volume called NAME (synthesize --samples N): adds the CNR's uncertainty; repeatable")
    p.add_argument("--output", type=Path, help="folder for cnr_per_lesion.csv and cnr.json")
    p.set_defaults(func=cmd_cnr)



#: The run's own file of its settings and data, written before the first epoch; --resume reads it.
RUN_CONFIG = "config.json"
#: What a resumed run may change: train longer, on another device, or validate and sample at another pace.
RESUMABLE = {"epochs", "device", "val_every", "sample_every"}


def _flags(args) -> dict:
    """The settings given on this command line, by TrainConfig field ('generator.ngf' for the network's)."""
    given = {"generator.ngf": args.ngf, "generator.levels": args.levels, "generator.dropout": args.dropout,
             "generator.residual": args.residual or None, "generator.norm": args.norm, "epochs": args.epochs, "discriminator_ndf": args.ndf,
             "crop": args.crop, "samples_per_volume": args.samples_per_volume, "lr": args.lr,
             "lr_decay_epoch": args.lr_decay_epoch, "precision": args.precision, "device": args.device, "seed": args.seed,
             "model_id": args.model_id, "default_stride": args.default_stride, "val_every": args.val_every, "sample_every": args.sample_every,
             "val_max_cases": args.val_max_cases, "val_full": args.val_full or None,
             "lowpass_l1_weight": args.lowpass_l1}
    return {k: v for k, v in given.items() if v is not None}


def _data(args) -> dict:
    if args.phantom_seeds:
        return {"phantom_seeds": args.phantom_seeds, "phantom_slices": args.phantom_slices}
    return {"pairs": str(args.pairs.resolve()), "register": bool(args.register),
            **({"val_pairs": str(args.val_pairs.resolve())} if args.val_pairs else {})}


def _with_hashes(data: dict) -> dict:
    """The data source as the card records it: each pair list file with its sha256, so the card names its very data."""
    from ..fileio import sha256_of

    out = dict(data)
    for key in ("pairs", "val_pairs"):
        if key in data and Path(data[key]).is_file():
            out[key + "_sha256"] = sha256_of(Path(data[key]))
    return out


def _flag_name(field: str) -> str:
    return "--" + {"discriminator_ndf": "ndf"}.get(field.split(".")[-1], field.split(".")[-1]).replace("_", "-")


def _resumed(args) -> tuple[dict, dict] | str:
    """The run's own settings and data for --resume, or why this command line cannot resume it."""
    path = args.output / RUN_CONFIG
    if path.is_file():
        from ..fileio import read_json_object

        stored = read_json_object(path, "a training run's settings")
        config, data = stored["config"], stored["data"]
    else:  # a run from before runs kept config.json: its checkpoint holds the settings, the data come from the flags
        import torch

        if not (args.phantom_seeds or args.pairs):
            return f"{args.output} has no {RUN_CONFIG}: give the run's --pairs or --phantom-seeds to resume it"
        path = args.output / "checkpoint.pt"
        config, data = json.loads(torch.load(path, map_location="cpu", weights_only=True)["config"]), _data(args)
    for field, value in _flags(args).items():
        section, _, name = field.rpartition(".")
        before = (config[section] if section else config).get(name)
        if field not in RESUMABLE and value != before:
            changeable = ", ".join(_flag_name(f) for f in sorted(RESUMABLE))
            return (f"{_flag_name(field)} {value} differs from the run's {before} ({path}); a resumed run keeps its settings "
                    f"(only {changeable} may change): drop the flag, or start a new run in a new folder")
    if (args.phantom_seeds or args.pairs) and _data(args) != data:
        return f"the training data differ from the run's ({path}: {data}); a resumed run keeps its data"
    return config, data


def started_from(card) -> dict:
    """What a fine-tuned card keeps of the model it began from: enough to reproduce the chain of runs."""
    return {"model_id": card.model_id, "sha256": card.sha256, "command": card.training.get("command"),
            "started_from": card.training.get("started_from")}


def _starting_model(name: str, flags: dict):
    """The model --init-from names, loaded (its weights' sha256 checked); a network flag must agree with its card."""
    from ..engine import store
    from ..engine.models import load_model
    from ..errors import InputError

    model = load_model(store.resolve(name), device="cpu")
    arch = model.card.generator_config().to_dict()
    for field, value in flags.items():
        if field.startswith("generator.") and arch.get(field.split(".")[1]) != value:
            raise InputError(model.card_path, f"{_flag_name(field)} {value} differs from the network being fine-tuned "
                                              f"({arch.get(field.split('.')[1])}); drop the flag")
    return model


def cmd_train(args) -> int:
    import dataclasses

    from ..engine.training import TrainConfig, Trainer, load_pairs, read_pair_list, split_pairs, split_record
    from ..fileio import atomic_write_text

    held = sorted(p.name for p in args.output.iterdir()) if args.output.is_dir() else []
    if held and not (args.resume or args.overwrite):
        # Days of GPU time sit in a checkpoint: a new run over it is never started by default.
        print(f"error: {args.output} already holds files ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); --resume "
              "continues that run, --overwrite starts a new one over it, or give a new folder", file=sys.stderr)
        return EXIT_USAGE
    if args.resume and args.init_from:
        print("error: --init-from starts a new run; a resumed run continues from its own checkpoint", file=sys.stderr)
        return EXIT_USAGE
    if args.resume and ((args.output / RUN_CONFIG).is_file() or (args.output / "checkpoint.pt").is_file()):
        resumed = _resumed(args)
        if isinstance(resumed, str):
            print(f"error: {resumed}", file=sys.stderr)
            return EXIT_USAGE
        config, data = resumed
        cfg = TrainConfig.from_dict(config)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in _flags(args).items() if k in RESUMABLE})
    else:
        if not (args.phantom_seeds or args.pairs):
            print("error: give --pairs or --phantom-seeds (a new run needs its training data)", file=sys.stderr)
            return EXIT_USAGE
        if args.val_pairs and not args.pairs:
            print("error: --val-pairs goes with --pairs (phantom runs split their own seeds)", file=sys.stderr)
            return EXIT_USAGE
        cfg = TrainConfig.from_dict(json.loads(args.config.read_text())) if args.config else TrainConfig()
        flags = _flags(args)
        gen = dataclasses.replace(cfg.generator, **{k.split(".")[1]: v for k, v in flags.items() if k.startswith("generator.")})
        cfg = dataclasses.replace(cfg, generator=gen, **{k: v for k, v in flags.items() if not k.startswith("generator.")})
        data = _data(args)
        if args.init_from:
            start = _starting_model(args.init_from, flags)
            card = start.card
            cfg = dataclasses.replace(cfg, generator=card.generator_config(), windows=card.encoding.windows, window_z=card.window["z"],
                                      init_from={"model_id": card.model_id, "sha256": card.sha256})
        if args.phantom_seeds:
            cfg = dataclasses.replace(cfg, training_data=f"procedural chest phantom, seeds {args.phantom_seeds}, {args.phantom_slices} slices")
    if "phantom_seeds" in data:
        pairs = phantom_pairs(seed_list(data["phantom_seeds"]), data["phantom_slices"])
    else:
        pairs = load_pairs(read_pair_list(Path(data["pairs"])), register=data["register"])
    if data.get("val_pairs"):
        train, val = pairs, load_pairs(read_pair_list(Path(data["val_pairs"])), register=data.get("register", False))
        shared = sorted({p.group or p.name for p in train} & {p.group or p.name for p in val})
        if shared:
            print(f"error: patient(s) {', '.join(shared[:5])} are in both --pairs and --val-pairs; a patient's cases "
                  "belong to one side", file=sys.stderr)
            return EXIT_USAGE
    else:
        train, val = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    registered = [{"pair": p.name, **p.registration} for p in train + val if p.registration]
    trainer = Trainer(cfg, args.output, progress=print)
    split = split_record(train, val, cfg.seed, "--val-pairs" if data.get("val_pairs") else f"val_fraction {cfg.val_fraction}")
    trainer.run_record = {"command": "synthetic-contrast " + " ".join(args.command_line), "data": _with_hashes(data),
                          "pairs": len(train) + len(val), "patients": len(split["train"]["patients"]) + len(split["validation"]["patients"]),
                          "split": split, **({"registration": registered} if registered else {})}
    if args.init_from and not args.resume:
        trainer.run_record["started_from"] = started_from(start.card)
    if trainer.rank == 0:
        for r in registered:
            print(f"registered {r['pair']}: {r['metric']} {r['before']:.4f} -> {r['after']:.4f} in {r['iterations']} "
                  f"iterations; translation {r['translation_mm']} mm, rotation {r['rotation_deg']} deg")
        print(f"split: {len(train)} training pairs ({len(split['train']['patients'])} patients), {len(val)} validation "
              f"pairs ({len(split['validation']['patients'])} patients), by patient; {args.output / 'split.json'}")
        if not args.resume:
            atomic_write_text(args.output / RUN_CONFIG, json.dumps({"config": cfg.to_dict(), "data": data}, indent=2) + "\n")
            atomic_write_text(args.output / "split.json", json.dumps(split, indent=2) + "\n")
            if registered:
                atomic_write_text(args.output / "registration.json", json.dumps(registered, indent=2) + "\n")
    if args.resume:
        trainer.load_checkpoint()
        print(f"resumed after epoch {trainer.epoch}")
    elif args.init_from:
        trainer.start_from(start)
        print(f"starting from {start.card.model_id} ({start.card_path}, sha256 {start.card.sha256[:16]}...)")
    try:
        trainer.fit(train, val)
    finally:
        trainer.close()
    if trainer.rank == 0:
        print(f"model card: {args.output / (cfg.model_id + '.json')}")
        if args.install:
            from ..engine import store

            model = store.install(args.output / (cfg.model_id + ".json"), args.install)
            print(f"installed as {model.name} in {model.card_path.parent}; use it with --model {model.name}")
    return EXIT_OK


def _range(text: str | None, cast=int):
    if not text:
        return None
    lo, hi = text.split(":")
    return cast(lo), cast(hi)


def cmd_evaluate(args) -> int:
    from ..measurement.evaluation import EvaluationSettings, evaluate_case, lpips_metric, table2_markdown, write_reports
    from ..io.reading import read_volume

    width, level = (float(v) for v in args.window.split(","))
    settings = EvaluationSettings((width, level), _range(args.slices), _range(args.z_range_mm, float), args.body_mask,
                                  str(args.lpips_weights) if args.lpips_weights else None)
    lpips = lpips_metric(settings)
    if args.cases:
        import csv

        with open(args.cases, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        missing = [c for c in ("case", "pred", "input", "reference") if not rows or c not in rows[0]]
        if missing:
            print(f"error: {args.cases}: the cases CSV needs the columns case,pred,input,reference[,sd]; "
                  f"missing {', '.join(missing)}", file=sys.stderr)
            return EXIT_USAGE
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
    summary = write_reports(results, args.output, args.input_label, settings)
    print(table2_markdown(summary, args.input_label, settings=settings))
    if "calibration" in summary:
        c = summary["calibration"]
        print(f"uncertainty: Spearman(SD, |error|) median {c['spearman_rho']['median']:.3f}, AUSE median {c['ause_hu']['median']:.2f} HU "
              f"({c['ause_relative']['median']:.1%} of the MAE); see uncertainty_calibration.csv and sparsification.png")
    if "lpips_note" in results[0]:
        print(results[0]["lpips_note"])
    from ..measurement.evaluation import enhancement_markdown

    print(enhancement_markdown(results))
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
    from ..measurement.cnr import measure_cnr, summarize_cnr
    from ..fileio import atomic_write_csv, atomic_write_text
    from ..measurement.rois import read_rois
    from ..io.reading import read_volume

    if args.cases:
        if args.volumes or args.rois or args.sd:
            print("error: --cases names each case's volumes and ROIs; give no volumes, --rois or --sd with it", file=sys.stderr)
            return EXIT_USAGE
        if not args.output:
            print("error: --cases needs --output for its tables and figure", file=sys.stderr)
            return EXIT_USAGE
        from ..measurement.cnr_study import cnr_study

        print(cnr_study(args.cases, args.output), end="")
        return EXIT_OK
    if not args.volumes or not args.rois:
        print("error: give the volumes and --rois, or --cases CSV", file=sys.stderr)
        return EXIT_USAGE

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
