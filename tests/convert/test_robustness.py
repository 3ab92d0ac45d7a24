"""Property-based: mutated prototxt text and caffemodel bytes never raise anything but a camcaffe error."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from camcaffe.caffe.caffemodel import read_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import CamcaffeError, OnnxModelError
from camcaffe.runtime.model import load_onnx_model
from tests.helpers import net_text

BASE = net_text(
    (1, 3, 12, 12),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)
WORK = Path(tempfile.mkdtemp(prefix="camcaffe_fuzz_"))
(WORK / "base.prototxt").write_text(BASE)
write_random_caffemodel(WORK / "base.prototxt", WORK / "base.caffemodel", seed=0)
CAFFEMODEL = (WORK / "base.caffemodel").read_bytes()

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate_text(data) -> str:
    text = BASE
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        choice = data.draw(st.sampled_from(["delete", "insert", "replace_number", "truncate"]))
        if choice == "delete":
            text = text[:position] + text[position + data.draw(st.integers(1, 20)) :]
        elif choice == "insert":
            text = text[:position] + data.draw(st.text(max_size=12)) + text[position:]
        elif choice == "replace_number":
            text = text.replace(
                data.draw(st.sampled_from(["3", "4", "5", "12", "2", "1"])),
                str(data.draw(st.integers(-5, 10**6))),
                1,
            )
        else:
            text = text[:position]
    return text


@SETTINGS
@given(st.data())
def test_mutated_prototxt_gives_only_camcaffe_errors(data):
    text = _mutate_text(data)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        prototxt = Path(tmp) / "d.prototxt"
        prototxt.write_bytes(text.encode("utf-8", errors="replace"))
        out = Path(tmp) / "m.onnx"
        try:
            convert_files(prototxt, WORK / "base.caffemodel", out)
        except CamcaffeError:
            assert not out.exists()
            return
        assert_valid_model(out)


@SETTINGS
@given(st.data())
def test_mutated_caffemodel_gives_only_camcaffe_errors(data):
    raw = bytearray(CAFFEMODEL)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if kind == "flip":
            raw[position] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del raw[position:]
            if not raw:
                break
        else:
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        path = Path(tmp) / "w.caffemodel"
        path.write_bytes(bytes(raw))
        out = Path(tmp) / "m.onnx"
        try:
            weights = read_caffemodel(path)
            convert_files(WORK / "base.prototxt", path, out)
        except CamcaffeError:
            assert not out.exists()
            return
        # A mutated file that still converts: the model is valid and carries the weights the file holds now.
        model = assert_valid_model(out)
        stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for layer in ("conv", "fc"):
            blobs = weights.get(layer).blobs
            for blob, suffix in zip(blobs, ("W", "B"), strict=True):
                expected = blob.values.reshape(stored[f"{layer}_{suffix}"].shape)
                assert np.array_equal(stored[f"{layer}_{suffix}"], expected, equal_nan=True), (
                    f"{layer}_{suffix}"
                )


def assert_valid_model(path: Path) -> onnx.ModelProto:
    """The file a conversion wrote passes the ONNX checker and camcaffe's own loader."""
    assert path.exists()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    load_onnx_model(path)
    return model


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    result = convert_files(
        WORK / "base.prototxt", WORK / "base.caffemodel", model_dir / "m.onnx", external_data=True
    )
    model = onnx.load(str(result.paths[0]), load_external_data=False)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(4096))
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(model, str(model_dir / "evil.onnx"))
    with pytest.raises(OnnxModelError, match="outside the model's folder"):
        load_onnx_model(model_dir / "evil.onnx")
