"""The reader-study verb: plan blinded sessions, their status, the analysis, and simulated readers for checks."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK

def register(sub) -> None:
    p = sub.add_parser("reader-study", help="blinded reader comparison: plan, status, analyze (simulate for pipeline checks)")
    rs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = rs.add_parser("plan", help="make the blinded, seeded session plan from a study file")
    q.add_argument("study", type=Path, help=f"study JSON (format {'synthetic-contrast-reader-study/1'})")
    q.add_argument("output", type=Path, help="new study folder: study.json, plan.json, later marks/")
    q = rs.add_parser("status", help="progress and washout warnings of every session")
    q.add_argument("study_dir", type=Path)
    q = rs.add_parser("analyze", help="detection (McNemar), conspicuity (Wilcoxon), JAFROC FOMs, plots")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--output", type=Path, help="report folder (default STUDY_DIR/analysis)")
    q.add_argument("--tolerance-mm", type=float, help="match distance (default: each lesion's short-axis radius)")
    q = rs.add_parser("simulate", help="fill all sessions with SIMULATED readers (pipeline check; marks are flagged)")
    q.add_argument("study_dir", type=Path)
    q.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_reader_study)


def cmd_reader_study(args) -> int:
    from .. import reader_study as rs

    if args.action == "plan":
        plan = rs.write_plan(args.study, args.output)
        readers = sorted({s["reader"] for s in plan["sessions"]})
        print(f"planned {len(plan['sessions'])} sessions for readers {', '.join(readers)} in {args.output} (seed {plan['seed']})")
    elif args.action == "status":
        for row in rs.study_status(args.study_dir):
            warn = f"  WARNING: {row['washout_warning']}" if row["washout_warning"] else ""
            print(f"reader {row['reader']:8s} session {row['session']} ({row['condition']:11s}) {row['done']:3d}/{row['total']} cases{warn}")
    elif args.action == "simulate":
        rs.simulate_readers(args.study_dir, args.seed)
        print(f"simulated readers filled every session of {args.study_dir} (marks flagged 'simulated')")
    else:
        out = args.output or args.study_dir / "analysis"
        summary = rs.analyze(args.study_dir, out, args.tolerance_mm)
        print(rs.summary_markdown(summary))
        print(f"reports in {out}")
    return EXIT_OK
