"""Shared ending of the benchmark scripts: print the summary and keep every run and the summary as JSON."""

import json


def report(runs: list, summary: dict, json_path=None) -> int:
    print(json.dumps(summary, indent=2))
    if json_path:
        json_path.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    return 0
