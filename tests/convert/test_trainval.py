"""Train/val prototxts (FCN, DeepLab, LightCNN ship only those): read in TEST phase, data layers become
inputs, loss/accuracy layers and label-only branches are dropped. Oracle: the same net written as a
deploy prototxt, converted with the same caffemodel, must give the same blobs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from camcaffe.caffe.net import load_net
from camcaffe.caffe.trainval import data_top_shapes
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.convert.registry import is_supported
from camcaffe.errors import CaffeFormatError, UnsupportedLayerError
from tests.helpers import assert_close, blobs_of, net_text

BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
"""
LOSSES = """
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""
LMDB = """name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "test_lmdb" batch_size: 100 backend: LMDB } }
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lmdb_data_layer_needs_input_shape(tmp_path):
    prototxt = _write(tmp_path, "train_val.prototxt", LMDB + BODY + LOSSES)
    with pytest.raises(UnsupportedLayerError, match=r"'mnist' \(Data: .*--input-shape data=100,C,H,W"):
        convert_files(prototxt, None, tmp_path / "m.onnx", random_seed=0)


def test_train_val_equals_its_deploy(tmp_path):
    trainval = _write(tmp_path, "train_val.prototxt", LMDB + BODY + LOSSES)
    deploy = _write(tmp_path, "deploy.prototxt", net_text((1, 1, 28, 28), BODY))
    caffemodel = tmp_path / "w.caffemodel"
    shapes = {"data": [1, 1, 28, 28]}
    write_random_caffemodel(trainval, caffemodel, seed=4, input_shapes=shapes)
    options = ConvertOptions(expose_all=True, input_shapes=shapes)
    result = convert_files(trainval, caffemodel, tmp_path / "tv.onnx", options)
    reference = convert_files(deploy, caffemodel, tmp_path / "d.onnx", ConvertOptions(expose_all=True))
    net = result.net
    assert net.data_layers == {"mnist": "Data"}
    assert net.dropped == [("accuracy", "Accuracy"), ("loss", "SoftmaxWithLoss")]
    assert net.dropped_tops == ["label"]
    assert net.outputs == ["ip1"]
    assert [name for name, _ in result.converted.inputs] == ["data"]
    x = np.random.default_rng(5).normal(size=(3, 1, 28, 28)).astype(np.float32)
    ours = blobs_of(result, tmp_path / "tv.onnx", {"data": x})
    theirs = blobs_of(reference, tmp_path / "d.onnx", {"data": x})
    assert set(ours) == set(theirs)
    for blob, value in theirs.items():
        assert_close(ours[blob], value, blob, rel=0)


@pytest.mark.parametrize(
    "layer,shapes",
    [
        (
            'type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } '
            "shape { dim: 2 } }",
            [[2, 3, 4, 5], [2]],
        ),
        (
            'type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 height: 4 width: 5 }',
            [[2, 3, 4, 5]],
        ),
        (
            'type: "MemoryData" top: "a" top: "b" memory_data_param { batch_size: 2 channels: 3 height: 9 width: 7 }',
            [[2, 3, 9, 7], [2, 1, 1, 1]],
        ),
        (
            'type: "ImageData" top: "a" top: "b" image_data_param { batch_size: 4 new_height: 32 new_width: 40 }',
            [[4, 3, 32, 40], [4]],
        ),
        (
            'type: "ImageData" top: "a" top: "b" transform_param { crop_size: 28 } '
            "image_data_param { new_height: 32 new_width: 40 is_color: false }",
            [[1, 1, 28, 28], [1]],
        ),
        ('type: "ImageData" top: "a" image_data_param { batch_size: 4 }', [None]),
        (
            'type: "WindowData" top: "a" top: "b" transform_param { crop_size: 27 } window_data_param { batch_size: 8 }',
            [[8, 3, 27, 27], [8]],
        ),
        ('type: "Data" top: "a" transform_param { crop_size: 27 } data_param { batch_size: 8 }', [None]),
        ('type: "HDF5Data" top: "a" hdf5_data_param { batch_size: 8 }', [None]),
        (
            'type: "AnnotatedData" top: "a" top: "b" data_param { batch_size: 8 } transform_param { '
            "resize_param { prob: 1 resize_mode: WARP height: 300 width: 320 interp_mode: LINEAR } }",
            [[8, 3, 300, 320], None],
        ),
        (
            'type: "AnnotatedData" top: "a" transform_param { resize_param { resize_mode: FIT_SMALL_SIZE '
            "height: 300 width: 320 } }",
            [None],
        ),
    ],
)
def test_data_layer_shapes(layer, shapes):
    from google.protobuf import text_format

    from camcaffe.caffe import caffe_pb2

    parsed = text_format.Parse(f'name: "d" {layer}', caffe_pb2.LayerParameter())
    assert data_top_shapes(parsed) == shapes


def test_label_only_branch_and_python_data_layer_are_handled(tmp_path):
    """DeepLab/FCN style: a Python data layer (no shape: --input-shape), a layer that only reshapes the
    label for the loss (dropped with it), the scores as the output."""
    text = """name: "fcn"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "voc_layers" layer: "VOCSegDataLayer" param_str: "{'split': 'val'}" } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink" interp_param { shrink_factor: 8 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label_shrink" top: "loss"
  loss_param { ignore_label: 255 normalize: false } }
"""
    prototxt = _write(tmp_path, "trainval.prototxt", text)
    net = load_net(prototxt, is_supported, collect=True)
    assert net.dropped == [("label_shrink", "Interp"), ("loss", "SoftmaxWithLoss")]
    assert net.outputs == ["score"]
    result = convert_files(
        prototxt,
        None,
        tmp_path / "m.onnx",
        ConvertOptions(input_shapes={"data": [1, 3, 8, 8]}),
        random_seed=1,
    )
    assert result.converted.outputs == ["score"]


def test_label_read_by_the_net_becomes_an_input(tmp_path):
    text = """name: "t"
layer { name: "data" type: "DummyData" top: "data" top: "aux"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }
layer { name: "cat" type: "Concat" bottom: "data" bottom: "aux" top: "cat" }
layer { name: "loss" type: "EuclideanLoss" bottom: "cat" bottom: "cat" top: "loss" }
"""
    prototxt = _write(tmp_path, "t.prototxt", text)
    result = convert_files(prototxt, None, tmp_path / "m.onnx")
    assert [name for name, _ in result.converted.inputs] == ["data", "aux"]
    assert result.converted.outputs == ["cat"]
    assert result.net.dropped == [("loss", "EuclideanLoss")]


def test_a_second_image_stream_stays_an_input_while_the_label_goes(tmp_path):
    """FCN's NYUD color+HHA nets: the data layer's second top feeds the net, the third only the loss."""
    text = """name: "two_streams"
layer { name: "color" type: "Python" top: "color" top: "hha" top: "label"
  python_param { module: "nyud_layers" layer: "NYUDSegDataLayer" } }
layer { name: "c" type: "Convolution" bottom: "color" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "h" type: "Convolution" bottom: "hha" top: "h" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "score" type: "Eltwise" bottom: "c" bottom: "h" top: "score" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""
    net = load_net(_write(tmp_path, "t.prototxt", text), is_supported, collect=True)
    assert net.layers[0].top == ["color", "hha"]
    assert net.dropped_tops == ["label"]
    assert net.outputs == ["score"]


LIGHTCNN_V1 = """name: "DeepFace_set003_net"
layers { name: "data" type:DATA top: "data" top: "label"
  data_param{ source: "train_lmdb" backend: LMDB batch_size: 64 }
  transform_param { scale: 0.00390625 crop_size: 128 mirror: true }
  include: { phase: TRAIN } }
layers { name: "data" type: DATA top: "data" top: "label"
  data_param{ source: "val_lmdb" backend: LMDB batch_size: 10 }
  transform_param { scale: 0.00390625 crop_size: 128 mirror: false }
  include: { phase: TEST } }
layers{ name: "conv1" type: CONVOLUTION convolution_param { num_output: 8 kernel_size: 9 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } bottom: "data" top: "conv1" }
layers{ name: "pool1" type: POOLING pooling_param { pool: MAX kernel_size: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers{ name: "slice1" type:SLICE slice_param { slice_dim: 1 } bottom: "pool1" top: "slice1_1" top: "slice1_2" }
layers{ name: "etlwise1" type: ELTWISE bottom: "slice1_1" bottom: "slice1_2" top: "eltwise1" eltwise_param { operation: MAX } }
layers{ name: "fc1" type: INNER_PRODUCT inner_product_param{ num_output: 16 } bottom: "eltwise1" top: "fc1" }
layers { name: "dropout1" type: DROPOUT bottom: "fc1" top: "dropout1" dropout_param { dropout_ratio: 0.7 } }
layers{ name: "fc2" type: INNER_PRODUCT weight_decay: 10 weight_decay: 10 inner_product_param{ num_output: 10 } bottom: "dropout1" top: "fc2" }
layers { name: "softmax" type: SOFTMAX bottom: "fc2" top: "prob" }
layers { name: "accuracy" type: ACCURACY bottom: "prob" bottom: "label" top: "accuracy" }
layers{ name: "loss" type: SOFTMAX_LOSS bottom: "fc2" bottom: "label" loss_weight: 1 }
"""


def test_v1_train_test_file(tmp_path):
    """LightCNN's (DeepFace_set003_train_test) V1 form: DATA layers per phase, V1 loss/accuracy types."""
    prototxt = _write(tmp_path, "train_test.prototxt", LIGHTCNN_V1)
    with pytest.raises(UnsupportedLayerError, match=r"--input-shape data=10,C,128,128\)"):
        convert_files(prototxt, None, tmp_path / "m.onnx", random_seed=0)  # V1 data_param + crop_size
    shapes = {"data": [1, 1, 32, 32]}
    caffemodel = tmp_path / "w.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, v1=True, input_shapes=shapes)
    result = convert_files(prototxt, caffemodel, tmp_path / "m.onnx", ConvertOptions(input_shapes=shapes))
    assert result.net.dropped == [("accuracy", "Accuracy"), ("loss", "SoftmaxWithLoss")]
    assert result.converted.outputs == ["prob"]
    x = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)
    prob = blobs_of(result, tmp_path / "m.onnx", {"data": x})["prob"]
    assert prob.shape == (2, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)


def test_unknown_input_shape_name_is_refused(tmp_path):
    prototxt = _write(tmp_path, "train_val.prototxt", LMDB + BODY + LOSSES)
    with pytest.raises(CaffeFormatError, match="--input-shape dat: the net has no input blob .* data"):
        convert_files(
            prototxt,
            None,
            tmp_path / "m.onnx",
            ConvertOptions(input_shapes={"dat": [1, 1, 28, 28]}),
            random_seed=0,
        )


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcaffe.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_converts_a_train_val_file_and_says_what_it_dropped(tmp_path):
    prototxt = _write(tmp_path, "train_val.prototxt", LMDB + BODY + LOSSES)
    caffemodel = tmp_path / "w.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, input_shapes={"data": [1, 1, 28, 28]})
    missing = _cli("convert", prototxt, caffemodel, "-o", tmp_path / "m.onnx")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "--input-shape data=100,C,H,W" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    done = _cli("convert", prototxt, caffemodel, "-o", tmp_path / "m.onnx", "--input-shape", "data=1,1,28,28")
    assert done.returncode == 0, done.stderr
    dropped = [line for line in done.stderr.splitlines() if "dropped" in line]
    assert dropped == [
        "camcaffe: train/val net: data layer(s) made inputs: mnist (Data); dropped 2 layer(s): accuracy "
        "(Accuracy), loss (SoftmaxWithLoss); dropped label top(s): label"
    ]
    bad = _cli("convert", prototxt, caffemodel, "-o", tmp_path / "m.onnx", "--input-shape", "data=1,x")
    assert bad.returncode != 0 and "NAME=N,C,H,W" in bad.stderr
