"""The DICOM node verb: ``serve`` runs it; ``serve status`` and ``serve retry`` look at and act on its spool."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(sub) -> None:
    p = sub.add_parser("serve", help="run a DICOM node: a PACS sends NCCT series, the sCECT goes back into the same study")
    p.add_argument("action", nargs="?", choices=["run", "status", "retry"], default="run",
                   help="run the node (default), show its queue, or put failed series back into it")
    p.add_argument("--config", type=Path, help="TOML file with the settings; the flags below override it")
    p.add_argument("--port", type=int, help="TCP port to listen on (default 11112)")
    p.add_argument("--bind", help="address to listen on (default: 127.0.0.1, or every address when --allow-host is given)")
    p.add_argument("--ae-title", help="this node's AE title (default SYNTHCONTRAST)")
    p.add_argument("--spool", type=Path, help="folder for received instances, results, the queue and the log")
    p.add_argument("--destination", help="where results go by C-STORE: AE@HOST:PORT")
    p.add_argument("--stow-url", help="or a DICOMweb base URL for STOW-RS")
    p.add_argument("--allow", action="append", default=[], metavar="AE", help="calling AE title allowed to send (repeatable)")
    p.add_argument("--allow-host", action="append", default=[], dest="allow_hosts", metavar="IP", help="host allowed to connect (repeatable; default any)")
    p.add_argument("--model", type=Path, help="model store name ('models list') or model card JSON (default: the bundled demo model)")
    from ..engine.devices import DEVICE_HELP

    p.add_argument("--device", action="append", default=[], dest="devices",
                   help=f"one worker per device, repeatable: {DEVICE_HELP} (default auto)")
    p.add_argument("--samples", type=int, help="stochastic samples: > 1 also sends the uncertainty (SD) series")
    p.add_argument("--strict", action="store_true", default=None, help="do not send a result for an out-of-distribution series")
    p.add_argument("--quiet-seconds", type=float, help="a series is complete this long after its last instance (default 30)")
    p.add_argument("--json", action="store_true", help="status: print JSON for scripts instead of the table")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import importlib.util

    if importlib.util.find_spec("pynetdicom") is None:
        print("error: the DICOM node needs pynetdicom: pip install 'synthetic-contrast[node]'", file=sys.stderr)
        return EXIT_FAILED
    from ..node import service

    if args.action in ("status", "retry"):
        spool = args.spool
        if spool is None and args.config is not None:
            from ..node.config import load_config

            spool = load_config(args.config, {}).spool
        if not spool or not (Path(spool) / service.QUEUE_FILE).is_file():
            print("error: give the --spool (or --config) of a node that has run: no queue found", file=sys.stderr)
            return EXIT_USAGE
        try:
            if args.action == "retry":
                print(f"{service.retry_failed(spool)} failed series put back into the queue")
            else:
                report = service.status_report(spool)
                print(json.dumps(report, indent=2) if args.json else service.status_table(report), flush=True)
        except BrokenPipeError:  # 'serve status | head': the reader has what it wanted
            sys.stderr.close()
        return EXIT_OK
    from ..node.config import load_config

    overrides = {k: getattr(args, k) for k in ("port", "bind", "ae_title", "spool", "destination", "stow_url", "allow",
                                               "allow_hosts", "model", "devices", "samples", "strict", "quiet_seconds")}
    config = load_config(args.config, overrides)
    try:
        return service.serve(config)
    except service.StartError as exc:
        print(f"error: the node did not start: {exc}", file=sys.stderr)
        return EXIT_FAILED
