"""`camcaffe convert DEPLOY [WEIGHTS] -o OUT.onnx` (deploy or train/val prototxt; no weights for a net
without parameters)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from camcaffe.cli.export_cam import add_cam_flags
from camcaffe.cli.options import parse_floats, parse_ints
from camcaffe.errors import CamcaffeError, VerificationError
from camcaffe.runtime.presets import PRESETS

if TYPE_CHECKING:
    from camcaffe.explain.cam_export import CamOutputs


def _input_shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.partition("=")
    shape = parse_ints(dims, "--input-shape") if sep else []
    if not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"--input-shape takes NAME=N,C,H,W with positive integers (e.g. data=1,3,224,224), got '{text}'"
        )
    return name, shape


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a Caffe deploy (or train/val) prototxt + caffemodel to ONNX",
        description="Convert a Caffe deploy prototxt and caffemodel into a faithful, self-describing ONNX file. "
        "A train/val prototxt is read in TEST phase: its data layers become inputs, its loss and accuracy "
        "layers are dropped.",
    )
    parser.add_argument("deploy", type=Path, help="deploy or train/val .prototxt")
    parser.add_argument(
        "weights",
        type=Path,
        nargs="?",
        help=".caffemodel (omit for a net without parameters, or with --random-weights)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    parser.add_argument(
        "--labels", type=Path, help="label file to embed (index label / CSV / synset_words / JSON)"
    )
    mean = parser.add_mutually_exclusive_group()
    mean.add_argument(
        "--mean",
        type=lambda t: parse_floats(t, "--mean"),
        help="per-channel mean in the net's channel order, e.g. 104,117,123",
    )
    mean.add_argument("--mean-file", type=Path, help="mean image (.binaryproto or .npy)")
    parser.add_argument("--raw-scale", type=float, help="multiply [0,1] pixels by this (classic: 255)")
    parser.add_argument(
        "--channel-swap",
        type=lambda t: parse_ints(t, "--channel-swap"),
        help="channel order, e.g. 2,1,0 for RGB->BGR",
    )
    parser.add_argument("--input-scale", type=float, help="multiply after mean subtraction")
    parser.add_argument(
        "--std", type=lambda t: parse_floats(t, "--std"), help="per-channel divisor after the mean"
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="record a framework's preprocessing in the model (as 'camcaffe meta --preset'); the flags above "
        "override its values",
    )
    parser.add_argument("--batch", type=int, help="fix the batch size (default: symbolic)")
    parser.add_argument(
        "--input-shape",
        type=_input_shape,
        action="append",
        default=[],
        metavar="NAME=N,C,H,W",
        help="shape of an input blob (repeatable); needed for train/val data layers whose parameters "
        "do not give it (Data, HDF5Data, Python, ...)",
    )
    parser.add_argument(
        "--expose", nargs="+", default=[], metavar="BLOB", help="also output these Caffe blobs"
    )
    parser.add_argument(
        "--expose-all", action="store_true", help="output every Caffe blob (as pycaffe net.blobs)"
    )
    parser.add_argument(
        "--external-data", action="store_true", help="store weights in OUT.onnx.data (automatic above 1.9 GB)"
    )
    parser.add_argument(
        "--random-weights",
        type=int,
        metavar="SEED",
        help="no caffemodel: use seeded random weights (testing)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare every blob with OpenCV 4's Caffe runtime on a random input",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="--verify tolerance on max|diff| / max(1, max|reference|) (default 1e-4)",
    )
    parser.add_argument(
        "--with-cam",
        type=int,
        metavar="K",
        help="add in-graph CAM outputs for the top K classes (as 'camcaffe export-cam --top-k K')",
    )
    add_cam_flags(parser, "--with-cam")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camcaffe.convert.api import Preprocessing, convert_files
    from camcaffe.convert.converter import ConvertOptions

    if args.weights is not None and args.random_weights is not None:
        raise CamcaffeError("convert: give either a caffemodel or --random-weights, not both")
    if args.batch is not None and args.batch <= 0:
        raise CamcaffeError(f"convert: --batch must be a positive integer, got {args.batch}")
    if (args.cam_class or args.no_cam_resize) and args.with_cam is None:
        raise CamcaffeError("convert: --cam-class and --no-cam-resize go with --with-cam K")
    if args.with_cam is not None and args.with_cam < 1:
        raise CamcaffeError(
            f"convert: --with-cam takes the number of classes to map (1 or more), got {args.with_cam}"
        )
    if args.verify and args.weights is None:
        raise CamcaffeError("convert: --verify needs a caffemodel (OpenCV reads the same files)")
    preprocessing = None
    given = {
        "mean": args.mean,
        "raw_scale": args.raw_scale,
        "channel_swap": args.channel_swap,
        "input_scale": args.input_scale,
        "std": args.std,
    }
    if args.preset is not None or args.mean_file is not None or any(v is not None for v in given.values()):
        from camcaffe.runtime.presets import check_settings

        check_settings(given)
        mean_image = None
        if args.mean_file is not None:
            from camcaffe.runtime.preprocess import load_mean_file

            mean_image = load_mean_file(args.mean_file)
        if args.preset is not None:
            preprocessing = Preprocessing.from_preset(args.preset, mean_image=mean_image, **given)
        else:
            preprocessing = Preprocessing(mean_image=mean_image, **given)
    input_shapes = dict(args.input_shape)
    if len(input_shapes) != len(args.input_shape):
        raise CamcaffeError("convert: --input-shape names a blob twice; give each input once")
    started = time.perf_counter()
    result = convert_files(
        args.deploy,
        args.weights,
        args.output,
        ConvertOptions(
            batch=args.batch,
            expose=list(args.expose),
            expose_all=args.expose_all,
            input_shapes=input_shapes or None,
        ),
        preprocessing=preprocessing,
        labels_path=args.labels,
        external_data=True if args.external_data else None,
        random_seed=args.random_weights,
    )
    elapsed = time.perf_counter() - started
    record = add_cam_in_place(args, result.paths[0]) if args.with_cam is not None else None
    for warning in result.warnings:
        print(f"camcaffe: warning: {warning}", file=sys.stderr)
    dropped = dropped_summary(result.net)
    if dropped:
        print(f"camcaffe: {dropped}", file=sys.stderr)
    converted = result.converted
    head = converted.cam_head
    head_text = (
        f"; CAM head: feature '{head['feature_blob']}' -> '{head['fc_layer']}' ({head['num_classes']} classes)"
        if head
        else "; no CAM head found"
    )
    if not getattr(args, "quiet", False):
        print(
            f"wrote {', '.join(str(p) for p in result.paths)}: {len(result.net.layers)} layers, "
            f"{len(converted.builder.nodes)} ONNX nodes, outputs {', '.join(converted.outputs)}{head_text} "
            f"({elapsed:.2f} s)",
            file=sys.stderr,
        )
        if record is not None:
            from camcaffe.cli.export_cam import describe_record

            print(describe_record(result.paths[0], record), file=sys.stderr)
    if args.verify:
        from camcaffe.convert.verify import verify_with_opencv

        report = verify_with_opencv(args.deploy, args.weights, result.paths[0], result.net, converted)
        if report.unavailable:
            print(f"camcaffe: warning: --verify skipped: {report.unavailable}", file=sys.stderr)
            return 0
        if report.not_judged:
            print(
                f"camcaffe: warning: --verify did not compare what {len(report.not_judged)} layer(s) compute, "
                f"nor anything after them ({'; '.join(report.not_judged[:3])})",
                file=sys.stderr,
            )
        worst = report.worst()
        failures = report.failures(args.tolerance)
        summary = (
            (
                f"verify: {len(report.compared)} blobs compared with OpenCV, worst '{worst.blob}' "
                f"relative difference {worst.relative:.2e} (tolerance {args.tolerance:g})"
            )
            if worst
            else "verify: nothing compared"
        )
        if failures:
            names = ", ".join(f"{f.blob} ({f.relative:.2e})" for f in failures[:5])
            for path in result.paths:
                path.unlink(missing_ok=True)
            raise VerificationError(
                f"{summary}; {len(failures)} blob(s) differ beyond tolerance: {names} "
                f"({args.output} removed; rerun without --verify to keep it)"
            )
        print(summary, file=sys.stderr)
    return 0


def add_cam_in_place(args: argparse.Namespace, path: Path) -> CamOutputs:
    """`--with-cam K`: the converted file gets its CAM outputs (export-cam's code path); a model without a
    CAM head is refused and removed, as --verify removes a model that disagrees."""
    from camcaffe.explain.cam_export import export_cam_file

    try:
        record = export_cam_file(
            path, path, args.with_cam, class_input=args.cam_class, resize=not args.no_cam_resize
        )
    except CamcaffeError as exc:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".data").unlink(missing_ok=True)
        raise type(exc)(
            f"--with-cam: {exc} ({path} removed; convert without --with-cam to keep it)"
        ) from None
    return record


def dropped_summary(net) -> str:
    """One line naming what a train/val net lost on the way to a deploy graph ('' for a deploy net)."""
    if not net.dropped and not net.dropped_tops and not net.data_layers:
        return ""
    parts = []
    if net.data_layers:
        parts.append(
            "data layer(s) made inputs: " + ", ".join(f"{n} ({t})" for n, t in net.data_layers.items())
        )
    if net.dropped:
        parts.append(
            f"dropped {len(net.dropped)} layer(s): " + ", ".join(f"{n} ({t})" for n, t in net.dropped)
        )
    if net.dropped_tops:
        parts.append("dropped label top(s): " + ", ".join(net.dropped_tops))
    return "train/val net: " + "; ".join(parts)
