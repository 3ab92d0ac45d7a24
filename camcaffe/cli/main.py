"""The `camcaffe` command line. Errors caused by input are one line on stderr and a non-zero
exit code; `--debug` shows the traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from camcaffe import __version__
from camcaffe.errors import CamcaffeError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from camcaffe.cli import cam, convert, evaluate, export_cam, inspect, meta, report, web

    parser = argparse.ArgumentParser(
        prog="camcaffe",
        description="Faithful Caffe -> ONNX conversion, ONNX Runtime inference and Class Activation Maps.",
    )
    parser.add_argument("--version", action="version", version=f"camcaffe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (convert, export_cam, inspect, meta, cam, evaluate, report, web):
        module.add_parser(subparsers)
    # The global flags work after the subcommand too (`camcaffe cam ... --quiet --debug`); SUPPRESS keeps a
    # flag given before the subcommand when it is not repeated after it.
    for subparser in subparsers.choices.values():
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        subparser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print only errors"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    debug = args.debug or os.environ.get("CAMCAFFE_DEBUG") == "1"
    try:
        return int(args.run(args) or 0)
    except CamcaffeError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split("\n"))
        print(f"camcaffe: error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("camcaffe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        if debug:
            raise
        print("camcaffe: error: out of memory; try a smaller --batch-size or input", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the one-line promise
        if debug:
            raise
        print(
            f"camcaffe: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
