"""The reader-study verb: plan blinded sessions, their status, the analysis with its significance tests, RJafroc's
Excel format in and out, and simulated readers for pipeline checks."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK


def _margin(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a margin: give a difference of figures of merit, such as 0.05") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a margin is a difference of figures of merit, between 0 and 1; got {value:g}")
    return value


def register(sub) -> None:
    from ..readerstudy.foms import FOMS
    from ..readerstudy.sessions import STUDY_FORMAT

    p = sub.add_parser("reader-study", help="blinded reader comparison: plan, status, analyze, import-rjafroc (simulate for pipeline checks)")
    rs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = rs.add_parser("plan", help="make the blinded, seeded session plan from a study file")
    q.add_argument("study", type=Path, help=f"study JSON (format {STUDY_FORMAT})")
    q.add_argument("output", type=Path, help="new study folder: key/ (the plan, for the administrator only) and readers/ "
                                             "(the package a reading workstation gets; the marks come back in it)")
    q = rs.add_parser("status", help="progress and washout warnings of every session")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--readers", type=Path, help="the readers' package, where it came back to (default STUDY_DIR/readers)")
    q = rs.add_parser("analyze", help="detection, conspicuity, figures of merit, and the Obuchowski-Rockette-Hillis significance tests")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--output", type=Path, help="report folder (default STUDY_DIR/analysis)")
    q.add_argument("--tolerance-mm", type=float, help="match distance (default: each lesion's short-axis radius)")
    q.add_argument("--fom", choices=FOMS, help="figure of merit of the significance tests (default wAFROC, as in RJafroc; "
                                                "wAFROC1 when the study has no non-diseased case)")
    q.add_argument("--export-rjafroc", type=Path, metavar="FILE.xlsx", help="also write the ratings in RJafroc's JAFROC Excel format")
    q.add_argument("--readers", type=Path, help="the readers' package, where it came back to (default STUDY_DIR/readers)")
    q.add_argument("--margin", type=_margin, help="also test non-inferiority and equivalence of every pair of modalities with "
                                                "this margin on the figure of merit's scale, such as 0.05")
    q = rs.add_parser("import-rjafroc", help="a study read elsewhere, from RJafroc's JAFROC Excel file, as a study folder 'analyze' accepts")
    q.add_argument("xlsx", type=Path)
    q.add_argument("study_dir", type=Path, help="new folder")
    q = rs.add_parser("size", help="readers and cases for a power, from a pilot study or given OR variance components")
    q.add_argument("pilot", type=Path, help="a pilot study folder (read here or imported), or a JSON file of OR variance "
                                            "components: VarTR, Cov1, Cov2, Cov3, Var and KStar (the pilot's cases)")
    q.add_argument("--modalities", nargs=2, metavar=("A", "B"), help="the two modalities to compare (default: NCCT+sCECT "
                                                                      "and CECT where the pilot has them, else its only two)")
    q.add_argument("--fom", choices=FOMS, help="figure of merit (default as in analyze)")
    q.add_argument("--effect", type=float, help="the true difference A - B of figures of merit to detect (default: the "
                                                "pilot's observed one); with --margin, the true difference assumed (default 0)")
    q.add_argument("--margin", type=_margin, help="size for non-inferiority of A to B with this margin instead")
    q.add_argument("--power", type=float, default=0.8, help="desired power (default 0.8)")
    q.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    q.add_argument("--readers", default="4,6,8,10", help="numbers of readers to size for (default 4,6,8,10)")
    q.add_argument("--output", type=Path, help="also write sizing.json and sizing.md into this folder")
    q = rs.add_parser("simulate", help="fill all sessions with SIMULATED readers (pipeline check; marks are flagged)")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_reader_study)


def cmd_reader_study(args) -> int:
    from ..readerstudy import analysis, sessions

    if args.action == "plan":
        from ..readerstudy.package import KEY_DIR, READERS_DIR, write_plan

        plan = write_plan(args.study, args.output)
        readers = sorted({s["reader"] for s in plan["sessions"]})
        print(f"planned {len(plan['sessions'])} sessions for readers {', '.join(readers)} in {args.output} (seed {plan['seed']}); "
              f"give the readers {args.output / READERS_DIR} only: {args.output / KEY_DIR} maps their codes to cases")
    elif args.action == "status":
        for row in sessions.study_status(args.study_dir, args.readers):
            warn = f"  WARNING: {row['washout_warning']}" if row["washout_warning"] else ""
            simulated = "  SIMULATED readers' marks" if row["simulated"] else ""
            print(f"reader {row['reader']:8s} session {row['session']} ({row['condition']:11s}) {row['done']:3d}/{row['total']} "
                  f"cases{simulated}{warn}")
    elif args.action == "simulate":
        from ..readerstudy.simulation import simulate_readers

        simulate_readers(args.study_dir, args.seed)
        print(f"simulated readers filled every session of {args.study_dir} (marks flagged 'simulated')")
    elif args.action == "size":
        print(_size(args), end="")
    elif args.action == "import-rjafroc":
        from ..readerstudy.rjafroc import import_rjafroc

        ratings = import_rjafroc(args.xlsx, args.study_dir)
        i, j, k1, k2 = ratings.shape
        print(f"imported {i} modalities, {j} readers, {k1} non-diseased and {k2} diseased cases ({ratings.paradigm}) into {args.study_dir}")
    else:
        from ..readerstudy.report import significance_markdown

        out = args.output or args.study_dir / "analysis"
        summary = analysis.analyze(args.study_dir, out, args.tolerance_mm, args.fom, args.export_rjafroc, args.readers,
                                   args.margin)
        print(significance_markdown(summary["significance"]) if summary.get("imported") else analysis.summary_markdown(summary))
        print(f"reports in {out}")
    return EXIT_OK


def _size(args) -> str:
    """The 'reader-study size' verb: components from the pilot (or a file), the table, and the files asked for."""
    import json

    from ..errors import InputError
    from ..fileio import atomic_write_text, read_json_object
    from ..readerstudy.sizing import Components, choose_pair, parse_readers, pilot, sizing_markdown, sizing_table

    try:
        readers = parse_readers(args.readers)
        if not 0 < args.power < 1 or not 0 < args.alpha < 1:
            raise ValueError(f"power and alpha lie between 0 and 1; got {args.power:g} and {args.alpha:g}")
        if Path(args.pilot).is_dir():
            from ..readerstudy.analysis import choose_fom, study_ratings_of

            ratings = study_ratings_of(args.pilot)
            pair = choose_pair(ratings.modality_ids, args.modalities)
            fom, _ = choose_fom(args.fom, ratings)
            components, observed = pilot(ratings, fom, pair)
            source = f"the pilot {args.pilot} ({fom}, {pair[0]} - {pair[1]}, {len(ratings.reader_ids)} readers, " \
                     f"{components.pilot_cases} cases)"
        else:
            components = Components.from_mapping(read_json_object(args.pilot, "a file of variance components"), str(args.pilot))
            observed, source = None, f"{args.pilot}"
    except ValueError as exc:
        raise InputError(args.pilot, str(exc)) from exc
    if args.margin is not None:
        effect = args.effect if args.effect is not None else 0.0
    elif args.effect is not None:
        effect = args.effect
    elif observed is not None:
        effect = observed
    else:
        raise InputError(args.pilot, "give --effect (the difference to detect) or --margin: a file of components has no observed difference")
    if args.margin is None and effect == 0:
        raise InputError(args.pilot, "an effect of 0 cannot be detected; give --effect, or --margin for non-inferiority")
    rows = sizing_table(components, readers, effect, args.power, args.alpha, args.margin)
    text = sizing_markdown(rows, effect, args.power, args.alpha, args.margin, source)
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        record = {"effect": effect, "margin": args.margin, "power": args.power, "alpha": args.alpha, "source": source,
                  "components": vars(components), "rows": rows}
        atomic_write_text(Path(args.output) / "sizing.json", json.dumps(record, indent=2) + "\n")
        atomic_write_text(Path(args.output) / "sizing.md", text)
    return text
