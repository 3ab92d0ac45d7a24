"""camcaffe: faithful Caffe → ONNX conversion, ONNX Runtime execution and Class Activation Maps.

It also answers to pycaffe's names, so a legacy script runs with `import camcaffe as caffe`: `caffe.Net`,
`caffe.TEST`, `caffe.set_mode_gpu()`, `caffe.io.Transformer`, ... (see camcaffe.pycaffe and camcaffe.io).
They are imported on first use, so `import camcaffe` stays light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PYCAFFE_NAMES = frozenset(
    {
        "TEST",
        "TRAIN",
        "Blob",
        "Layer",
        "Net",
        "ParamBlob",
        "PycaffeError",
        "set_device",
        "set_mode_cpu",
        "set_mode_gpu",
        "set_random_seed",
    }
)

if TYPE_CHECKING:
    from camcaffe import io
    from camcaffe.pycaffe import (
        TEST,
        TRAIN,
        Blob,
        Layer,
        Net,
        ParamBlob,
        PycaffeError,
        set_device,
        set_mode_cpu,
        set_mode_gpu,
        set_random_seed,
    )


def __getattr__(name: str) -> Any:
    if name in _PYCAFFE_NAMES:
        return getattr(importlib.import_module("camcaffe.pycaffe"), name)
    if name == "io":
        return importlib.import_module("camcaffe.io")
    raise AttributeError(f"module 'camcaffe' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


__all__ = [
    "TEST",
    "TRAIN",
    "Blob",
    "Layer",
    "Net",
    "ParamBlob",
    "PycaffeError",
    "__version__",
    "io",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_random_seed",
]
