"""`camcaffe report RESULTS`: one self-contained HTML gallery of a `camcaffe cam` run."""

from __future__ import annotations

import argparse
from pathlib import Path

from camcaffe.errors import CamcaffeError


def add_parser(subparsers) -> None:
    from camcaffe.output.report import DEFAULT_MAX_EMBED_MB, REPORT_NAME

    parser = subparsers.add_parser(
        "report",
        help="write an HTML gallery of a 'cam' run (originals, overlays, boxes, top-k bars)",
        description="Write one self-contained HTML file showing a 'camcaffe cam' run: per image the original "
        "with its boxes, the CAM overlay and the top-k classes as bars; sortable and filterable by class and "
        "probability, a page at a time; evaluation figures as a table. Opens from file://, needs no network.",
    )
    parser.add_argument("results", type=Path, help="a 'camcaffe cam --out' folder or its results.csv")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help=f"HTML file to write (default: {REPORT_NAME} next to results.csv)",
    )
    parser.add_argument(
        "--evaluation",
        type=Path,
        help="evaluation JSON from 'camcaffe evaluate' (default: evaluation.json next to results.csv, if any)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--link",
        dest="embed",
        action="store_false",
        help="link the images by relative paths (default; keep the report next to the run's files)",
    )
    mode.add_argument(
        "--embed",
        dest="embed",
        action="store_true",
        help="embed JPEG thumbnails instead (one portable file; capped by --max-embed-mb)",
    )
    parser.add_argument(
        "--max-embed-mb",
        type=float,
        default=DEFAULT_MAX_EMBED_MB,
        help=f"--embed: refuse when the thumbnails pass this many MB (default {DEFAULT_MAX_EMBED_MB:g})",
    )
    parser.add_argument("--title", help="page title (default: 'camcaffe report — <folder>')")
    parser.set_defaults(run=run, embed=False)


def run(args: argparse.Namespace) -> int:
    from camcaffe.output.report import REPORT_NAME, results_csv, write_report

    if args.max_embed_mb <= 0:
        raise CamcaffeError(f"--max-embed-mb must be a positive number, got {args.max_embed_mb:g}")
    output = args.output if args.output is not None else results_csv(args.results).parent / REPORT_NAME
    write_report(
        args.results,
        output,
        evaluation=args.evaluation,
        embed=args.embed,
        title=args.title,
        max_embed_mb=args.max_embed_mb,
        quiet=getattr(args, "quiet", False),
    )
    return 0
