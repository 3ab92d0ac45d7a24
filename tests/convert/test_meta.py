"""camcaffe's metadata written into a foreign ONNX file (`camcaffe meta`): the wire-level rewrite keeps every other
byte, settings merge and are checked against the model, labels are counted, a failed write leaves the file whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from camcaffe.convert import meta
from camcaffe.convert.meta import (
    LABELS_KEY,
    MEAN_IMAGE_KEY,
    PREPROCESS_KEY,
    metadata_changes,
    read_metadata,
    update_metadata,
)
from camcaffe.errors import CamcaffeError, LabelsError, OnnxModelError


def keras_like(path: Path, classes: int = 5) -> Path:
    """An NHWC classifier as Keras exports one: Transpose -> Conv -> Transpose, ReduceMean over (1, 2), Dense."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "kernel"),
        numpy_helper.from_array(np.asarray([1, 2], np.int64), "hw"),
        numpy_helper.from_array(rng.normal(size=(4, classes)).astype(np.float32), "dense"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "kernel"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["nhwc"], ["relu"]),
        helper.make_node("ReduceMean", ["relu", "hw"], ["gap"], keepdims=0),
        helper.make_node("MatMul", ["gap", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    model.metadata_props.add(key="producer.note", value="kept as it is")
    onnx.save(model, path)
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    return keras_like(tmp_path / "keras.onnx")


def _without_metadata(path: Path) -> onnx.ModelProto:
    loaded = onnx.load(str(path))
    del loaded.metadata_props[:]
    return loaded


def _stored(path: Path) -> dict:
    return json.loads(read_metadata(path)[PREPROCESS_KEY])


def test_round_trip_keeps_the_model_and_other_metadata(model):
    before = _without_metadata(model).SerializeToString()
    update_metadata(model, metadata_changes(model, "keras-vgg"))
    assert _without_metadata(model).SerializeToString() == before
    onnx.checker.check_model(onnx.load(str(model)))
    stored = _stored(model)
    assert stored == {
        "resize": "warp",
        "resize_filter": "pil-nearest",
        "raw_scale": 255.0,
        "channel_swap": [2, 1, 0],
        "mean": [103.939, 116.779, 123.68],
        "preset": "keras-vgg",
    }
    assert read_metadata(model)["producer.note"] == "kept as it is"
    from camcaffe.runtime.session import ModelSession

    assert ModelSession(model, "cpu").info.preprocess == stored  # what cam reads


def test_settings_merge_and_a_preset_replaces_them(model):
    update_metadata(model, metadata_changes(model, "torchvision"))
    update_metadata(model, metadata_changes(model, settings={"resize_filter": "pil-bicubic"}))
    stored = _stored(model)
    assert stored["resize_filter"] == "pil-bicubic" and stored["std"] == [0.229, 0.224, 0.225]
    update_metadata(model, metadata_changes(model, "keras-vgg", {"mean": [1.0, 2.0, 3.0]}))
    stored = _stored(model)
    assert "std" not in stored and stored["mean"] == [1.0, 2.0, 3.0] and stored["preset"] == "keras-vgg"


def test_a_new_mean_drops_a_converted_mean_image(model):
    update_metadata(model, {MEAN_IMAGE_KEY: "AAAA", PREPROCESS_KEY: json.dumps({"mean_image": [3, 2, 2]})})
    update_metadata(model, metadata_changes(model, settings={"mean": [1.0, 2.0, 3.0]}))
    assert MEAN_IMAGE_KEY not in read_metadata(model) and "mean_image" not in _stored(model)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mean": [1.0, 2.0]}, "--mean has 2 values but the model's input has 3 channels"),
        ({"std": [0.5, 0.0, 0.5]}, "--std .*must be positive"),
        ({"std": [0.5, float("nan"), 0.5]}, "--std .*must be finite"),
        ({"raw_scale": 0.0}, "--raw-scale 0.0: must be a finite, non-zero number"),
        ({"channel_swap": [0, 0, 1]}, "--channel-swap 0,0,1: must be an order of 0..2"),
        ({"resize": "squash"}, "--resize squash: unknown"),
        ({"resize_filter": "pil-area"}, "--resize-filter pil-area: unknown"),
        ({"resize": "torchvision", "resize_filter": "caffe"}, "--resize torchvision resizes as Pillow does"),
    ],
)
def test_bad_values_are_refused_and_the_file_is_untouched(model, settings, message):
    before = model.read_bytes()
    with pytest.raises(CamcaffeError, match=message):
        metadata_changes(model, settings=settings)
    assert model.read_bytes() == before


def test_labels_are_counted_against_the_output(model, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(5)) + "\n")
    update_metadata(model, metadata_changes(model, labels_path=labels))
    assert json.loads(read_metadata(model)[LABELS_KEY])[4] == "class 4"
    labels.write_text("a\nb\n")
    with pytest.raises(LabelsError, match="has 2 labels but .* 'prob' has 5 classes"):
        metadata_changes(model, labels_path=labels)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(model, monkeypatch):
    before = model.read_bytes()

    def broken(key: str, value: str) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(meta, "_encode_entry", broken)
    with pytest.raises(OSError, match="disk full"):
        update_metadata(model, metadata_changes(model, "keras-tf"))
    assert model.read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["keras.onnx"]


def test_not_an_onnx_file_is_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(OnnxModelError, match="not a valid ONNX model"):
        metadata_changes(bad, "caffe")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcaffe.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_cli_writes_shows_and_refuses_in_one_line(model, capsys):
    from camcaffe.cli.main import main

    result = _cli("meta", model, "--preset", "keras-tf", "--resize-filter", "pil-bilinear", "--show")
    assert result.returncode == 0, result.stderr
    assert '"resize_filter": "pil-bilinear"' in result.stdout and '"preset": "keras-tf"' in result.stdout
    capsys.readouterr()
    assert main(["meta", str(model), "--mean", "1,2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"camcaffe: error: {model}: --mean has 2 values"), err
    assert main(["meta", str(model)]) == 2 and "nothing to do" in capsys.readouterr().err


def test_convert_records_a_preset_as_meta_does(tmp_path):
    from camcaffe.cli.main import main
    from tests.helpers import net_text

    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(
        net_text(
            (1, 3, 8, 8),
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            "convolution_param { num_output: 2 kernel_size: 3 } }",
        )
    )
    out = tmp_path / "net.onnx"
    base = ["convert", str(prototxt), "--random-weights", "0", "-o", str(out), "-q"]
    assert main([*base, "--preset", "keras-vgg", "--std", "2,2,2"]) == 0
    stored = _stored(out)
    assert stored["preset"] == "keras-vgg" and stored["resize_filter"] == "pil-nearest"
    assert stored["mean"] == [103.939, 116.779, 123.68] and stored["std"] == [2.0, 2.0, 2.0]  # the flag wins
    annotated = tmp_path / "annotated.onnx"
    annotated.write_bytes(out.read_bytes())
    update_metadata(annotated, metadata_changes(annotated, "keras-vgg", {"std": [2.0, 2.0, 2.0]}))
    assert _stored(annotated) == stored
    assert main([*base, "--std", "0,1,1"]) == 2  # refused in one line before converting


def test_input_size_is_stored_and_must_fit_a_fixed_side(model):
    """--input-size records the size to feed a variable-size model at; a side the model fixes must agree."""
    update_metadata(model, metadata_changes(model, input_size=[16, 16]))
    assert _stored(model)["input_size"] == [16, 16]
    with pytest.raises(CamcaffeError, match="height is fixed at 16; --input-size 20,16 does not fit"):
        metadata_changes(model, input_size=[20, 16])
    with pytest.raises(CamcaffeError, match="two positive integers"):
        metadata_changes(model, input_size=[0, 16])
