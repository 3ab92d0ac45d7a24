"""`camcaffe inspect FILE`: blobs with shapes and layer parameter shapes, as the classic demo
printed by walking net.blobs and net.params; for an ONNX file also the embedded preprocessing and labels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camcaffe.errors import InputFileError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list blobs and parameter shapes of a prototxt(+caffemodel) or ONNX file",
        description="Print each blob with its shape and each layer's parameter shapes; for an ONNX file "
        "also the preprocessing and labels that convert embedded.",
    )
    parser.add_argument("file", type=Path, help="deploy .prototxt or .onnx")
    parser.add_argument("weights", type=Path, nargs="?", help=".caffemodel (optional, with a prototxt)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camcaffe.runtime.describe import describe_lines

    path: Path = args.file
    if not path.exists():
        raise InputFileError(f"{path}: not found; check the path")
    if path.suffix.lower() == ".onnx":
        if args.weights is not None:
            raise InputFileError(f"{args.weights}: an ONNX file carries its own weights; drop this argument")
        from camcaffe.runtime.describe import describe_onnx

        info = describe_onnx(path)
    else:
        from camcaffe.convert.describe import describe_caffe

        info = describe_caffe(path, args.weights)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    print("\n".join(describe_lines(info)))
    return 0
