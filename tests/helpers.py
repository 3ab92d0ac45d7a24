"""Shared test helpers: small nets written on the fly, random caffemodels, running ONNX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.random_model import write_random_caffemodel

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared reference data is only on CI and dev machines)")
    return path


def run_onnx(model_path: Path, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def net_text(input_shape: tuple[int, ...], layers: str, name: str = "test_net") -> str:
    dims = "\n".join(f"input_dim: {d}" for d in input_shape)
    return f'name: "{name}"\ninput: "data"\n{dims}\n{layers}\n'


def convert_text(tmp_path: Path, text: str, seed: int = 0, expose_all: bool = True, batch: int | None = None):
    """Write prototxt + random caffemodel, convert; return (result, random weights record, onnx path)."""
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(text)
    caffemodel = tmp_path / "weights.caffemodel"
    weights = write_random_caffemodel(prototxt, caffemodel, seed=seed)
    onnx_path = tmp_path / "model.onnx"
    result = convert_files(
        prototxt, caffemodel, onnx_path, ConvertOptions(batch=batch, expose_all=expose_all)
    )
    return result, weights, onnx_path


def blobs_of(result, onnx_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every Caffe blob's final value, by Caffe blob name."""
    tensors = {b: t for b, t in result.converted.blob_tensors.items() if t in result.converted.outputs}
    values = run_onnx(onnx_path, feeds, list(dict.fromkeys(tensors.values())))
    blobs = {blob: values[tensor] for blob, tensor in tensors.items()}
    blobs.update({name: value for name, value in feeds.items() if name not in blobs})
    return blobs


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str = "", rel: float = 1e-4) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if expected.size else 0.0
    assert diff <= rel * scale, f"{what}: max|diff| {diff:.3g} > {rel} * {scale:.3g}"


def opencv_blobs(prototxt: Path, caffemodel: Path, x: np.ndarray, layer_names: list[str]) -> list[np.ndarray]:
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    net.setInput(x)
    return [np.asarray(v) for v in net.forward(layer_names)]


def default_sigint() -> None:
    """preexec_fn for a child that a test interrupts: a shell that started the tests in the background
    (`cmd &`) set SIGINT to 'ignore', which children inherit; restore the default so Ctrl-C reaches it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
