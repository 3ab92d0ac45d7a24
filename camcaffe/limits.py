"""Safety limits, each overridable by an environment variable read when it is used."""

from __future__ import annotations

import os

from camcaffe.errors import LimitError

MAX_BLOB_ELEMENTS = ("CAMCAFFE_MAX_BLOB_ELEMENTS", 1 << 28)  # 1 GiB of float32
MAX_PROTOTXT_BYTES = ("CAMCAFFE_MAX_PROTOTXT_BYTES", 64 * 1024 * 1024)
MAX_ONNX_BYTES = ("CAMCAFFE_MAX_ONNX_BYTES", 4 * 1024**3)
EXTERNAL_DATA_THRESHOLD = ("CAMCAFFE_EXTERNAL_DATA_THRESHOLD", 1_900_000_000)


def limit(setting: tuple[str, int]) -> int:
    """The limit's value: its environment variable when set (a positive integer), else the default."""
    name, default = setting
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise LimitError(f"{name}={raw!r} is not a positive integer; unset it or give a count") from None
    if value <= 0:
        raise LimitError(f"{name}={raw!r} is not a positive integer; unset it or give a count")
    return value
