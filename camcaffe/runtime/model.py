"""Load ONNX files safely: typed errors for corrupt files, external data confined to the model's folder.

`read_lite_model` parses a file with camcaffe's own subset of the ONNX schema (onnx_lite.proto) without
importing the onnx package; `load_onnx_model` gives the full onnx.ModelProto."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from camcaffe.errors import InputFileError, OnnxModelError
from camcaffe.limits import MAX_ONNX_BYTES, limit
from camcaffe.runtime import onnx_lite_pb2

if TYPE_CHECKING:
    import onnx

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def check_external_data(model, folder: Path, path: Path) -> None:
    root = folder.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or root not in target.parents:
            raise OnnxModelError(
                f"{path}: tensor '{tensor.name}' points its external data at '{location}', outside the model's "
                "folder; refusing to read it (keep the .data file next to the model)"
            )
        if not target.exists():
            raise OnnxModelError(
                f"{path}: external data file '{location}' for tensor '{tensor.name}' is missing"
            )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputFileError(f"{path}: ONNX model not found; check the path")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected an .onnx file")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: not readable (permissions); fix its permissions")
    size = path.stat().st_size
    if size == 0:
        raise OnnxModelError(f"{path}: empty file, not an ONNX model; convert it again")
    max_bytes = limit(MAX_ONNX_BYTES)
    if size > max_bytes:
        raise OnnxModelError(
            f"{path}: {size} bytes exceeds CAMCAFFE_MAX_ONNX_BYTES={max_bytes}; raise that limit if the model is trusted"
        )


def read_lite_model(path: str | os.PathLike) -> tuple[onnx_lite_pb2.ModelProto, bytes]:
    """The model parsed with camcaffe's ONNX subset, and the file's bytes; same checks as load_onnx_model."""
    path = Path(path)
    _check_file(path)
    try:
        data = path.read_bytes()
        model = onnx_lite_pb2.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxModelError(
            f"{path}: not a valid ONNX model ({type(exc).__name__}); is it corrupt or truncated?"
        ) from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from None
    if not model.graph.node:
        raise OnnxModelError(
            f"{path}: not a valid ONNX model (no graph nodes); is it corrupt or another file type?"
        )
    check_external_data(model, path.parent, path)
    return model, data


def load_onnx_model(path: str | os.PathLike, load_weights: bool = True) -> onnx.ModelProto:
    import onnx

    path = Path(path)
    _check_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise OnnxModelError(
            f"{path}: not a valid ONNX model ({type(exc).__name__}); is it corrupt or truncated?"
        ) from None
    if not model.graph.node:
        raise OnnxModelError(
            f"{path}: not a valid ONNX model (no graph nodes); is it corrupt or another file type?"
        )
    check_external_data(model, path.parent, path)
    if load_weights and any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model
