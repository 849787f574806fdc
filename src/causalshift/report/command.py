"""`causalshift report DIR... --out REPORT_DIR`: one Markdown + HTML report from result files.

Walks each DIR for analyze `results.json`, `sweep.json`, training runs (`config.json` +
`metrics.jsonl`) and `eval.json`; never loads a model (no torch, no transformers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from causalshift.errors import UserError
from causalshift.locks import output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="folders (searched recursively) or result files"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="REPORT_DIR",
        help="folder for report.md, report.html and the figures",
    )


def run(args: argparse.Namespace) -> int:
    from causalshift.report.build import build_report
    from causalshift.report.sources import find_sources

    out = Path(args.out)
    with output_folder(out):  # created, writable and locked before anything is read
        src = find_sources(args.dirs)
        if src.empty():
            raise UserError(
                "no result files found in "
                + ", ".join(args.dirs)
                + " (expected results.json, sweep.json, metrics.jsonl + config.json, or eval.json)"
            )
        md, page = build_report(src, out, [str(d) for d in args.dirs])
    print(f"wrote {md} and {page}")
    return 0
