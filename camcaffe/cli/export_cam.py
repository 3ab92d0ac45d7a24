"""`camcaffe export-cam MODEL.onnx -o OUT.onnx --top-k K [--cam-class]`: the model with its class activation
maps computed inside the graph (see explain/cam_export.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_cam_flags(parser: argparse.ArgumentParser, top_k_flag: str) -> None:
    """--cam-class and --no-cam-resize, shared with `convert --with-cam`."""
    parser.add_argument(
        "--cam-class",
        action="store_true",
        help=f"with {top_k_flag}: add the int64 input cam_class [N, M] (default [[0]]) and the maps of those classes",
    )
    parser.add_argument(
        "--no-cam-resize",
        action="store_true",
        help=f"with {top_k_flag}: leave out the maps resized to the input and normalised (cam_maps_resized)",
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-cam",
        help="add in-graph CAM outputs (top-K classes, probabilities, maps) to an ONNX classifier",
        description="Write a copy of an ONNX classifier whose extra outputs are, per image, the top-K classes, "
        "their probabilities and their class activation maps, computed inside the graph with standard ONNX ops: "
        "cam_top_classes int64 [N,K], cam_top_probabilities float [N,K], cam_maps float [N,K,h,w] (raw), "
        "cam_maps_resized float [N,K,H,W] (bilinear to the input size, min-max normalised). Channels-last "
        "(Keras, tf2onnx) heads give the same N,K,h,w maps; the ops take the form of the model's opset (11 to 28).",
    )
    parser.add_argument(
        "model", type=Path, help="ONNX classifier with a CAM head (as 'camcaffe convert' writes)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--top-k", type=int, required=True, help="how many classes to map per image")
    parser.add_argument("--feature-layer", help="feature blob of the CAM head (default: detected)")
    parser.add_argument("--fc-layer", help="classifier layer of the CAM head (default: detected)")
    parser.add_argument(
        "--layout",
        choices=["nchw", "nhwc"],
        default=None,
        help="the image input's layout, whose H, W cam_maps_resized takes (as camcaffe cam --layout; default: "
        "nhwc when the input's last dim is 1 or 3 and its second is not)",
    )
    add_cam_flags(parser, "--top-k")
    parser.set_defaults(run=run)


def describe_record(path: Path, record) -> str:
    extra = f", input {record.class_input} -> {record.class_maps}" if record.class_input else ""
    resized = f", {record.maps_resized}" if record.maps_resized else ""
    return (
        f"wrote {path}: CAM outputs ({record.kind}, top {record.top_k} of {record.num_classes} classes): "
        f"{record.top_classes}, {record.top_probabilities}, {record.maps}{resized}{extra}"
    )


def run(args: argparse.Namespace) -> int:
    from camcaffe.explain.cam_export import export_cam_file

    record = export_cam_file(
        args.model,
        args.output,
        args.top_k,
        class_input=args.cam_class,
        resize=not args.no_cam_resize,
        feature_layer=args.feature_layer,
        fc_layer=args.fc_layer,
        layout=args.layout,
    )
    if not getattr(args, "quiet", False):
        print(describe_record(args.output, record), file=sys.stderr)
    return 0
