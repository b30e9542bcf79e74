"""Command line ``synthetic-contrast <verb>``: one module per verb group (synthesis, batch, data, training and
evaluation, model store, reader study, DICOM node); this entry registers them and turns errors into exit codes.

Exit codes: 0 success, 1 the work failed (bad input, bad model, write error), 2 usage error, 3 refused as
out of distribution (--strict), 130 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import batch, data, models, node, reader_study, synthesis, training
from .common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OUT_OF_DISTRIBUTION, EXIT_USAGE, emit_event

VERB_GROUPS = (synthesis, batch, data, training, models, reader_study, node)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthetic-contrast", description="Synthetic contrast-enhanced CT from non-contrast chest CT (3D pix2pix).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"synthetic-contrast {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in VERB_GROUPS:
        group.register(sub)
    return parser


def main(argv=None) -> int:
    from ..errors import OutOfDistributionError, SynthesisCancelled, SyntheticContrastError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # what a card records of how its model was made
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    from .watchdog import watch_parent_from_environment

    watch_parent_from_environment(EXIT_CANCELLED)  # started by the Slicer module: end with it
    as_json = getattr(args, "progress_json", False)
    try:
        return args.func(args)
    except (SynthesisCancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        if as_json:
            emit_event("cancelled")
        return EXIT_CANCELLED
    except OutOfDistributionError as exc:
        # Each finding was printed on its own line already; the batch manifest and the node keep the full text.
        print(f"error: {exc.path}: {exc.what}: {len(exc.findings)} finding(s) above (--strict, nothing written)", file=sys.stderr)
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
