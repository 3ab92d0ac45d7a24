"""camcaffe: faithful Caffe → ONNX conversion, ONNX Runtime execution and Class Activation Maps.

The public API, each name imported on first use so that `import camcaffe` stays light:

- converting: `convert_files(deploy, weights, out, ConvertOptions(...), Preprocessing(...), labels_path=...)`;
- running a model: `ModelSession(model_path, provider="auto")`;
- CAMs over many images: `run_cam(CamOptions(model, inputs, out, ...))`, or build a `CamJob` and
  `CamJob.make_pipeline()` for one pipeline;
- evaluation of a run: `run_evaluate(EvaluateOptions(results, gt, ...))`; the HTML report: `write_report`.

It also answers to pycaffe's names, so a legacy script runs with `import camcaffe as caffe`: `caffe.Net`,
`caffe.TEST`, `caffe.set_mode_gpu()`, `caffe.io.Transformer`, ... (see camcaffe.pycaffe)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "convert_files": "camcaffe.convert.api",
    "ConvertOptions": "camcaffe.convert.converter",
    "Preprocessing": "camcaffe.convert.api",
    "ModelSession": "camcaffe.runtime.session",
    "CamJob": "camcaffe.engines.job",
    "CamOptions": "camcaffe.engines.cam_run",
    "run_cam": "camcaffe.engines.cam_run",
    "EvaluateOptions": "camcaffe.engines.evaluate_run",
    "run_evaluate": "camcaffe.engines.evaluate_run",
    "write_report": "camcaffe.output.report",
    "Classifier": "camcaffe.pycaffe.classifier",
    "Detector": "camcaffe.pycaffe.detector",
    "NetSpec": "camcaffe.pycaffe.net_spec",
    "layers": "camcaffe.pycaffe.net_spec",
    "params": "camcaffe.pycaffe.net_spec",
    "to_proto": "camcaffe.pycaffe.net_spec",
    **{
        name: "camcaffe.pycaffe.net"
        for name in (
            "TEST",
            "TRAIN",
            "Blob",
            "Layer",
            "Net",
            "ParamBlob",
            "PycaffeError",
            "SplitBlob",
            "init_log",
            "layer_type_list",
            "log",
            "set_device",
            "set_mode_cpu",
            "set_mode_gpu",
            "set_random_seed",
        )
    },
}

# pycaffe's submodules: caffe.io, caffe.proto (caffe.proto.caffe_pb2), caffe.draw
_SUBMODULES = {"io": "camcaffe.pycaffe.io", "proto": "camcaffe.proto", "draw": "camcaffe.pycaffe.draw"}

if TYPE_CHECKING:
    from camcaffe import proto
    from camcaffe.convert.api import Preprocessing, convert_files
    from camcaffe.convert.converter import ConvertOptions
    from camcaffe.engines.cam_run import CamOptions, run_cam
    from camcaffe.engines.evaluate_run import EvaluateOptions, run_evaluate
    from camcaffe.engines.job import CamJob
    from camcaffe.output.report import write_report
    from camcaffe.pycaffe import draw, io
    from camcaffe.pycaffe.classifier import Classifier
    from camcaffe.pycaffe.detector import Detector
    from camcaffe.pycaffe.net import (
        TEST,
        TRAIN,
        Blob,
        Layer,
        Net,
        ParamBlob,
        PycaffeError,
        SplitBlob,
        init_log,
        layer_type_list,
        log,
        set_device,
        set_mode_cpu,
        set_mode_gpu,
        set_random_seed,
    )
    from camcaffe.pycaffe.net_spec import NetSpec, layers, params, to_proto
    from camcaffe.runtime.session import ModelSession


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'camcaffe' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


__all__ = [
    "TEST",
    "TRAIN",
    "Blob",
    "CamJob",
    "CamOptions",
    "Classifier",
    "ConvertOptions",
    "Detector",
    "EvaluateOptions",
    "Layer",
    "ModelSession",
    "Net",
    "NetSpec",
    "ParamBlob",
    "Preprocessing",
    "PycaffeError",
    "SplitBlob",
    "__version__",
    "convert_files",
    "draw",
    "init_log",
    "io",
    "layer_type_list",
    "layers",
    "log",
    "params",
    "proto",
    "run_cam",
    "run_evaluate",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_random_seed",
    "to_proto",
    "write_report",
]
