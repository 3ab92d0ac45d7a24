"""`camcaffe meta MODEL.onnx [--preset NAME] [--mean ...] ... [--labels FILE] [--show]`: record how a model
wants its images (and its labels) in the ONNX file itself, so that `camcaffe cam` needs no flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from camcaffe.cli.options import parse_floats, parse_ints
from camcaffe.runtime.presets import PRESETS, RESIZE_FILTERS, RESIZES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "meta",
        help="write camcaffe's preprocessing and labels into an ONNX file (e.g. one exported from Keras)",
        description="Write the preprocessing (a preset and/or single settings) and the labels into the metadata "
        "of an ONNX file, in place and atomically; 'camcaffe cam' then uses them without flags (its flags still "
        "win). Settings merge with what the file holds; --preset replaces all the preprocessing settings.",
    )
    parser.add_argument("model", type=Path, help="the .onnx file to annotate (rewritten in place)")
    parser.add_argument("--preset", choices=list(PRESETS), help="a framework's whole preprocessing recipe")
    parser.add_argument(
        "--mean", type=lambda t: parse_floats(t, "--mean"), help="per-channel mean, net channel order"
    )
    parser.add_argument(
        "--std", type=lambda t: parse_floats(t, "--std"), help="per-channel divisor after the mean"
    )
    parser.add_argument("--raw-scale", type=float, help="multiply [0,1] pixels by this (255: 0..255 pixels)")
    parser.add_argument(
        "--channel-swap",
        type=lambda t: parse_ints(t, "--channel-swap"),
        help="channel order from RGB, e.g. 2,1,0 for BGR",
    )
    parser.add_argument("--input-scale", type=float, help="multiply after the mean (and std)")
    parser.add_argument(
        "--resize", choices=list(RESIZES), help="how cam cuts the photo: warp, crop, torchvision"
    )
    parser.add_argument("--resize-filter", choices=list(RESIZE_FILTERS), help="caffe or a Pillow filter")
    parser.add_argument(
        "--input-size",
        type=lambda t: parse_ints(t, "--input-size"),
        help="H,W to feed a model whose input height/width are variable (default: each image's own size)",
    )
    parser.add_argument(
        "--labels", type=Path, help="label file to embed (index label / CSV / synset_words / JSON)"
    )
    parser.add_argument("--show", action="store_true", help="print camcaffe's metadata (after any change)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from camcaffe.convert.meta import describe_metadata, metadata_changes, read_metadata, update_metadata
    from camcaffe.errors import CamcaffeError

    settings = {
        "mean": args.mean,
        "std": args.std,
        "raw_scale": args.raw_scale,
        "channel_swap": args.channel_swap,
        "input_scale": args.input_scale,
        "resize": args.resize,
        "resize_filter": args.resize_filter,
    }
    changing = (
        args.preset is not None
        or args.labels is not None
        or args.input_size is not None
        or any(v is not None for v in settings.values())
    )
    if not changing and not args.show:
        raise CamcaffeError(
            "meta: nothing to do; give --preset, a setting (--mean, --std, ...), --labels or --show"
        )
    if changing:
        changes = metadata_changes(args.model, args.preset, settings, args.labels, args.input_size)
        metadata = update_metadata(args.model, changes)
        if not args.quiet:
            print(
                f"camcaffe: wrote {', '.join(k for k, v in changes.items() if v is not None)} into {args.model}"
            )
    else:
        metadata = read_metadata(args.model)
    if args.show:
        lines = describe_metadata(metadata)
        print("\n".join(lines) if lines else f"{args.model}: no camcaffe metadata")
    return 0
