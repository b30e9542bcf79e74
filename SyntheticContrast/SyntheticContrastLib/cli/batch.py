"""The batch verb: many cases from a folder tree or a CSV manifest, resumable, sharded under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import EXIT_FAILED, EXIT_OK, add_strict_option, add_synthesis_options, synthesis_options


def register(sub) -> None:
    p = sub.add_parser("batch", help="synthesize many cases (folder tree or CSV manifest); resumable; torchrun shards cases")
    p.add_argument("input", type=Path, help="folder tree of NIfTI/NRRD/MHA files and DICOM series folders, or CSV with case,input[,series]")
    p.add_argument("output", type=Path, help="folder for outputs/, status/, logs/, manifest.csv (and dicom/)")
    add_synthesis_options(p)
    p.add_argument("--dicom", action="store_true", help="also export each sCECT as a derived DICOM series")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only inputs whose path under INPUT matches (repeatable), e.g. '*_ncct.nii.gz'; default: every volume and "
                        "DICOM series except synthetic ones and a '<x>_cect' beside its '<x>_ncct'")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out inputs whose path matches (repeatable)")
    p.add_argument("--shard", metavar="K/N", help="run shard K of N (every N-th case from the K-th); default: a SLURM array "
                                                  "task's own, from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--overwrite", action="store_true",
                   help="make again, with this run's model, the outputs another model made in OUTPUT (refused without it)")
    add_strict_option(p)
    p.set_defaults(func=cmd_batch)



def cmd_batch(args) -> int:
    import os

    from ..engine.batch import BatchRunner, discover_cases
    from ..engine.models import load_model

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    from ..engine.devices import resolve_device

    device = str(resolve_device(args.device))  # before any reading: a wrong --device fails at once
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    from ..engine.batch import parse_shard

    shard = parse_shard(args.shard)
    cases = discover_cases(args.input, args.include, args.exclude)
    model = load_model(args.model)
    runner = BatchRunner(args.output, model, synthesis_options(args, device), dicom=args.dicom, rank=rank, world=world, strict=args.strict,
                         plausibility_map=args.plausibility_map, overwrite=args.overwrite, shard=shard)
    mine = runner.shard(cases)
    desc = (f"shard {shard[0]}/{shard[1]} " if shard[1] > 1 else "") + (f"rank {rank}/{world}" if world > 1 else "cases")
    from .progress import progress_bar

    with progress_bar(total=len(mine), unit="case", desc=desc, disable=args.no_progress, position=rank) as bar:
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
