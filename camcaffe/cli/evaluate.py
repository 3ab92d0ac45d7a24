"""`camcaffe evaluate RESULTS --gt GT`: ILSVRC classification / localisation error of a `cam` run, and with
`--model` the gradient-free saliency metrics (pointing game, deletion / insertion AUC, average drop)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="localisation error and saliency metrics of a 'cam' run against ground-truth boxes",
        description="Score results.csv of 'camcaffe cam' against ground-truth boxes (ILSVRC rules: right class "
        "and IoU >= 0.5 with a box of that class, top-1 and top-5); prints a table and writes JSON.",
    )
    parser.add_argument("results", type=Path, help="results.csv of 'camcaffe cam', or its folder")
    parser.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="ground truth: a folder of PASCAL VOC / ILSVRC XML files, or a CSV image,class,x0,y0,x1,y1",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="label file of the model (checks every ground-truth class; default: the model's, or the "
        "labels results.csv mentions)",
    )
    parser.add_argument(
        "--guesses",
        choices=["first", "combine"],
        default="first",
        help="first: each ranked class with its first box (default); combine: the CAM authors' "
        "bboxCombine list (two boxes of classes 1-2, one of class 3; needs --boxes dt results)",
    )
    parser.add_argument(
        "--ignore-missing",
        action="store_true",
        help="score only the ground-truth images that results.csv lists (default: the others count as wrong)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the figures here (default: evaluation.json next to results.csv)"
    )
    parser.add_argument(
        "--model", type=Path, help="the ONNX model of the run: also compute the saliency metrics"
    )
    parser.add_argument(
        "--resize",
        choices=["warp", "crop", "torchvision"],
        default=None,
        help="--model: how images become the input (default: the cam run's, from its cam_settings.json, else warp)",
    )
    parser.add_argument(
        "--method", default=None, help="--model: the saliency method (default: the cam run's, else cam)"
    )
    parser.add_argument("--feature-layer", help="--model: the feature layer (default: the cam run's)")
    parser.add_argument("--fc-layer", help="--model: the classifier layer (default: the cam run's)")
    parser.add_argument(
        "--steps", type=int, default=32, help="--model: deletion/insertion steps (default 32)"
    )
    parser.add_argument(
        "--pointing-tolerance",
        type=int,
        default=15,  # EvaluateOptions.pointing_tolerance
        help="--model: pointing game tolerance in pixels (default %(default)s, as Zhang et al.)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="--model: perturbed inputs per inference batch"
    )
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camcaffe.engines.evaluate_run import EvaluateOptions, run_evaluate

    return run_evaluate(EvaluateOptions.from_namespace(args))
