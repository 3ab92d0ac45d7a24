"""`camcaffe cam MODEL.onnx INPUT... --out DIR`: class activation maps, boxes, overlays, results.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from camcaffe.cli.options import add_preprocessing_arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cam",
        help="compute class activation maps, boxes and overlays for images",
        description="Run a converted model on images and write CAM overlays, boxes and a results table.",
    )
    parser.add_argument("model", type=Path, help="ONNX file written by 'camcaffe convert' (or caffe2onnx)")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    parser.add_argument("--labels", type=Path, help="label file (default: the labels embedded by convert)")
    parser.add_argument("--feature-layer", help="feature blob to map (default: detected CAM head)")
    parser.add_argument("--fc-layer", help="classifier layer (default: detected CAM head)")
    parser.add_argument("--top-k", type=int, default=None, help="map the K most probable classes (default 1)")
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="NAME|INDEX",
        help="map this class (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default 8)")
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel pipelines (default: one per CPU core, up to 4; 1 on a GPU)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="heat map weight in overlays (default 0.5)")
    parser.add_argument(
        "--box-threshold",
        type=float,
        default=0.2,
        help="box around the region above this fraction of the map's maximum (default 0.2)",
    )
    parser.add_argument(
        "--crops",
        type=int,
        default=1,
        choices=[1, 10],
        help="10: the CAM demo's oversampling (256 resize, 4 corners + centre, mirrored), maps merged",
    )
    parser.add_argument(
        "--method",
        default="cam",
        metavar="NAME",
        help="saliency method: cam (default; needs global average pooling + a linear classifier), gradcam, "
        "gradcam++, layercam (gradients of the pre-softmax class score), scorecam (masked inputs, "
        "--batch-size per forward), ablationcam, eigencam (class-agnostic); the non-CAM methods work on any "
        "classifier, on --feature-layer (default: the CAM feature, else the last convolution)",
    )
    parser.add_argument(
        "--score",
        choices=["logit", "prob"],
        default="logit",
        help="gradient methods: differentiate the class logit (default) or its Softmax probability (as the "
        "Keras Grad-CAM tutorial does; a different map)",
    )
    parser.add_argument(
        "--boxes",
        default="threshold",
        metavar="KIND",
        help="threshold: largest region above --box-threshold (the paper's heuristic, default); "
        "dt: the CAM authors' released box generator",
    )
    parser.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local (default) or ray (Ray Data)"
    )
    parser.add_argument(
        "--address", help="--engine ray: the Ray cluster to join (default: start one locally)"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="--engine ray: inference actors")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=None, help="--engine ray: GPUs per inference actor"
    )
    parser.add_argument("--save-npy", action="store_true", help="also save raw CAMs as <stem>_cam.npy")
    parser.add_argument("--no-overlays", action="store_true", help="skip writing overlay images")
    parser.add_argument("--json", action="store_true", help="also write results.json")
    parser.add_argument(
        "--report", action="store_true", help="also write report.html (see 'camcaffe report') into --out"
    )
    add_preprocessing_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camcaffe.engines.cam_run import CamOptions, run_cam

    return run_cam(CamOptions.from_namespace(args))
