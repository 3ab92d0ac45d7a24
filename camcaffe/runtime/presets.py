"""Named preprocessing presets: how the tutorials of Caffe, torchvision and Keras turn a photo into the net
input, as camcaffe's settings (the names of `camcaffe cam`'s flags, in the net's channel order).

A preset is used by `cam --preset` (for the flags not given), and written into a model's metadata by `convert
--preset` and `meta --preset`. Every preset names every setting; None means "not used" (no std, no input scale).

Facts behind them (checked against Keras 3.15 and Pillow 13 in tests/engines/test_pipeline_presets.py):
Keras's `keras.utils.load_img(path, target_size=(h, w))` converts the image to RGB and resizes it straight to
(h, w) with Pillow's NEAREST filter (no aspect-preserving crop); `img_to_array` gives float32 0..255;
`preprocess_input` in 'caffe' mode (VGG16/19, ResNet50) flips RGB to BGR and subtracts 103.939, 116.779, 123.68,
in 'tf' mode (InceptionV3, Xception, MobileNetV2, ResNetV2) computes x / 127.5 - 1, in 'torch' mode (DenseNet)
x / 255 then ImageNet mean/std. torchvision's ImageNet recipe is Resize(256) (Pillow bilinear, antialiased),
CenterCrop(224), ToTensor, Normalize."""

from __future__ import annotations

import math
from typing import Any

from camcaffe.errors import CamcaffeError

RESIZE_FILTERS = (
    "caffe",
    "pil-nearest",
    "pil-box",
    "pil-bilinear",
    "pil-hamming",
    "pil-bicubic",
    "pil-lanczos",
)
"""The values of --resize-filter: caffe.io's resize, or one of Pillow's filters (runtime/pil_resize.py)."""

SETTINGS = ("resize", "resize_filter", "raw_scale", "channel_swap", "mean", "std", "input_scale")
"""What a preset sets, by CamOptions field name."""

_IMAGENET_MEAN_RGB = [0.485, 0.456, 0.406]
_IMAGENET_STD_RGB = [0.229, 0.224, 0.225]
_KERAS_TF = {  # x / 127.5 - 1 == (x - 127.5) / 127.5
    "resize": "warp",
    "resize_filter": "pil-nearest",
    "raw_scale": 255.0,
    "channel_swap": [0, 1, 2],
    "mean": [127.5, 127.5, 127.5],
    "std": [127.5, 127.5, 127.5],
    "input_scale": None,
}

PRESETS: dict[str, dict[str, Any]] = {
    "caffe": {  # the classic Caffe ImageNet scripts (caffe.io): BGR, 0..255, mean B,G,R = 104,117,123
        "resize": "warp",
        "resize_filter": "caffe",
        "raw_scale": 255.0,
        "channel_swap": [2, 1, 0],
        "mean": [104.0, 117.0, 123.0],
        "std": None,
        "input_scale": None,
    },
    "torchvision": {  # transforms.Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)
        "resize": "torchvision",
        "resize_filter": "pil-bilinear",
        "raw_scale": 1.0,
        "channel_swap": [0, 1, 2],
        "mean": _IMAGENET_MEAN_RGB,
        "std": _IMAGENET_STD_RGB,
        "input_scale": None,
    },
    "keras-vgg": {  # load_img(target_size) + vgg16.preprocess_input ('caffe' mode): BGR, 0..255, mean B,G,R
        "resize": "warp",
        "resize_filter": "pil-nearest",
        "raw_scale": 255.0,
        "channel_swap": [2, 1, 0],
        "mean": [103.939, 116.779, 123.68],
        "std": None,
        "input_scale": None,
    },
    "keras-tf": dict(_KERAS_TF),  # load_img + preprocess_input 'tf' mode (MobileNetV2, ResNetV2, Xception)
    "inception": dict(_KERAS_TF),  # the same numbers; InceptionV3's 299x299 comes from the model's input
    "keras-torch": {  # load_img + preprocess_input 'torch' mode (DenseNet): x / 255, ImageNet mean/std, RGB
        "resize": "warp",
        "resize_filter": "pil-nearest",
        "raw_scale": 1.0,
        "channel_swap": [0, 1, 2],
        "mean": _IMAGENET_MEAN_RGB,
        "std": _IMAGENET_STD_RGB,
        "input_scale": None,
    },
}


def preset(name: str, flag: str = "--preset") -> dict[str, Any]:
    """The settings of a preset (a copy); CamcaffeError naming the choices for an unknown name."""
    if name not in PRESETS:
        raise CamcaffeError(f"{flag} {name}: unknown; choose one of {', '.join(PRESETS)}")
    return {key: (list(value) if isinstance(value, list) else value) for key, value in PRESETS[name].items()}


RESIZES = ("warp", "crop", "torchvision")


def _numbers(value: Any, flag: str, channels: int | None) -> list[float]:
    if not isinstance(value, (list, tuple)) or not value:
        raise CamcaffeError(f"{flag} takes comma-separated numbers, got {value!r}")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        raise CamcaffeError(f"{flag} takes numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise CamcaffeError(f"{flag} {','.join(str(v) for v in value)}: every value must be finite")
    if channels is not None and len(numbers) != channels:
        raise CamcaffeError(
            f"{flag} has {len(numbers)} values but the model's input has {channels} channels; give one per channel"
        )
    return numbers


def _scalar(value: Any, flag: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CamcaffeError(f"{flag} takes a number, got {value!r}") from None
    if not math.isfinite(number) or number == 0.0:
        raise CamcaffeError(f"{flag} {value}: must be a finite, non-zero number")
    return number


def check_settings(settings: dict[str, Any], channels: int | None = None) -> dict[str, Any]:
    """`settings` (SETTINGS keys, None for unset) checked and normalised; CamcaffeError naming the flag and the
    value at fault. `channels`: the model input's channel count when known."""
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in SETTINGS:
            raise CamcaffeError(
                f"unknown preprocessing setting '{key}'; the settings are {', '.join(SETTINGS)}"
            )
        flag = "--" + key.replace("_", "-")
        if value is None:
            checked[key] = None
        elif key in ("mean", "std"):
            checked[key] = _numbers(value, flag, channels)
            if key == "std" and any(v <= 0 for v in checked[key]):
                raise CamcaffeError(f"--std {','.join(str(v) for v in value)}: every value must be positive")
        elif key in ("raw_scale", "input_scale"):
            checked[key] = _scalar(value, flag)
        elif key == "channel_swap":
            try:
                order = [int(v) for v in value]
            except (TypeError, ValueError):
                raise CamcaffeError(f"--channel-swap takes comma-separated integers, got {value!r}") from None
            if sorted(order) != list(range(len(order))) or (channels is not None and len(order) != channels):
                want = channels if channels is not None else len(order)
                raise CamcaffeError(
                    f"--channel-swap {','.join(str(v) for v in order)}: must be an order of 0..{want - 1} "
                    "(e.g. 2,1,0 for RGB->BGR)"
                )
            checked[key] = order
        elif key == "resize" and value not in RESIZES:
            raise CamcaffeError(f"--resize {value}: unknown; choose one of {', '.join(RESIZES)}")
        elif key == "resize_filter" and value not in RESIZE_FILTERS:
            raise CamcaffeError(
                f"--resize-filter {value}: unknown; choose one of {', '.join(RESIZE_FILTERS)}"
            )
        else:
            checked[key] = value
    if checked.get("resize") == "torchvision" and checked.get("resize_filter") == "caffe":
        raise CamcaffeError(
            "--resize torchvision resizes as Pillow does; give a pil-* --resize-filter, not caffe"
        )
    return checked
