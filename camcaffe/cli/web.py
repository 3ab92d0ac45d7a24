"""`camcaffe web MODEL.onnx -o site/`: a static page that explains images in the browser with
onnxruntime-web (see engines/web_run.py and output/web.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from camcaffe.cli.options import add_preprocessing_arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "web",
        help="write a static site that explains images in the browser (onnxruntime-web)",
        description="Write a folder (index.html, the model with in-graph CAM outputs, onnxruntime-web, a small "
        "app) that any static web server can host: drop a photo, see the top-K classes, the CAM overlay and its "
        "box, switch classes. The page preprocesses as 'camcaffe cam' does, from the model's metadata and the "
        "flags below.",
    )
    parser.add_argument(
        "model", type=Path, help="ONNX classifier with a CAM head (as 'camcaffe convert' writes)"
    )
    parser.add_argument(
        "-o", "--out", type=Path, required=True, help="site folder (new, empty, or a site to replace)"
    )
    parser.add_argument("--labels", type=Path, help="label file (default: the labels embedded by convert)")
    parser.add_argument(
        "--top-k", type=int, default=None, help="classes listed and mapped per image (default 5)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="initial heat map opacity (default 0.5)")
    parser.add_argument(
        "--box-threshold",
        type=float,
        default=0.2,
        help="box rule of camcaffe cam (default 0.2 of the maximum)",
    )
    parser.add_argument(
        "--ort-web",
        type=Path,
        metavar="DIR",
        help="folder with onnxruntime-web's files (default: $CAMCAFFE_ORT_WEB, else "
        "~/.cache/camcaffe/onnxruntime-web-VERSION, which 'make web' and --fetch fill)",
    )
    parser.add_argument(
        "--fetch",
        action="store_true",
        help="download the pinned onnxruntime-web with npm when the folder lacks it",
    )
    parser.add_argument(
        "--no-webgpu",
        dest="webgpu",
        action="store_false",
        help="leave out the WebGPU build (a 27 MB smaller site)",
    )
    parser.add_argument("--title", help="page title (default: the model's file name)")
    add_preprocessing_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from camcaffe.engines.web_run import WebOptions, build_site

    values = {f.name: getattr(args, f.name) for f in fields(WebOptions) if hasattr(args, f.name)}
    build_site(WebOptions(**values))
    return 0
