"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from camcaffe.runtime.presets import PRESETS, RESIZE_FILTERS


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got '{text}'") from None


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got '{text}'") from None


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """How photos become net inputs: the flags `cam` and `web` share (they settle them the same way)."""
    parser.add_argument(
        "--resize",
        choices=["warp", "crop", "torchvision"],
        default=None,
        help="warp: resize the whole image to the input (caffe.io; the default unless the model's metadata says "
        "otherwise); crop: resize to 256, centre crop; torchvision: shorter side to 256, centre crop (Resize + "
        "CenterCrop)",
    )
    parser.add_argument(
        "--resize-filter",
        choices=RESIZE_FILTERS,
        default=None,
        help="how --resize resamples: caffe (caffe.io's bilinear on floats; warp and crop's default) or Pillow's "
        "filter reproduced exactly on the 8-bit pixels (pil-bilinear: torchvision's default; pil-nearest: "
        "Keras's load_img)",
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="a framework's preprocessing, for the flags not given: caffe (BGR 0-255, mean 104,117,123), "
        "torchvision (RGB 0-1, ImageNet mean/std, --resize torchvision), keras-vgg (load_img + preprocess_input "
        "'caffe' mode: BGR, mean 103.939,116.779,123.68, pil-nearest), keras-tf / inception ('tf' mode: x/127.5-1), "
        "keras-torch ('torch' mode); without it, the model's metadata (convert/meta), else caffe",
    )
    parser.add_argument(
        "--layout",
        choices=["nchw", "nhwc"],
        default=None,
        help="how the net takes images: nchw (Caffe, PyTorch) or nhwc (channels-last: Keras, tf2onnx); "
        "default: nhwc when the input's last dim is 1 or 3 and its second is not",
    )
    parser.add_argument("--mean", type=lambda t: parse_floats(t, "--mean"), help="override the model's mean")
    parser.add_argument("--mean-file", type=Path, help="override with a mean image (.binaryproto/.npy)")
    parser.add_argument("--raw-scale", type=float, help="override raw scale")
    parser.add_argument(
        "--channel-swap", type=lambda t: parse_ints(t, "--channel-swap"), help="override channel swap"
    )
    parser.add_argument("--input-scale", type=float, help="override input scale")
    parser.add_argument(
        "--std",
        type=lambda t: parse_floats(t, "--std"),
        help="per-channel divisor after the mean, net channel order (torchvision: 0.229,0.224,0.225)",
    )
    parser.add_argument(
        "--input-size",
        type=lambda t: parse_ints(t, "--input-size"),
        metavar="H,W",
        help="feed images at this height,width, for a model whose input size is variable (cam: default each "
        "image at its own size; web needs it)",
    )
