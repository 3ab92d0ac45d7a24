"""Caffe's inserted Split layers: names, places and tops as insert_splits.cpp makes them (checked against real
Caffe's layer tables in ../shared/golden*/blobs_index.json), and how a Net lists them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.caffe.net import load_net
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.convert.registry import is_supported
from camcaffe.pycaffe.splits import blob_order, insert_splits
from tests.caffe_reference import parse_net
from tests.helpers import SHARED, shared_path

# data is read by conv1 and by the Eltwise; conv1 (after its in-place ReLU) by two convolutions
BRANCHY = """name: "branchy"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "a" type: "Convolution" bottom: "conv1" top: "a" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "conv1" top: "b" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "data" top: "sum" }
"""


def test_splits_follow_the_last_writer_and_number_the_readers() -> None:
    table = insert_splits(parse_net(BRANCHY).layer)
    assert [(e.name, e.type, e.bottoms, e.tops) for e in table] == [
        ("input", "Input", (), ("data",)),
        ("data_input_0_split", "Split", ("data",), ("data_input_0_split_0", "data_input_0_split_1")),
        ("conv1", "Convolution", ("data_input_0_split_0",), ("conv1",)),
        ("relu1", "ReLU", ("conv1",), ("conv1",)),
        ("conv1_relu1_0_split", "Split", ("conv1",), ("conv1_relu1_0_split_0", "conv1_relu1_0_split_1")),
        ("a", "Convolution", ("conv1_relu1_0_split_0",), ("a",)),
        ("b", "Convolution", ("conv1_relu1_0_split_1",), ("b",)),
        ("sum", "Eltwise", ("a", "b", "data_input_0_split_1"), ("sum",)),
    ]
    assert blob_order(table)[:4] == ["data", "data_input_0_split_0", "data_input_0_split_1", "conv1"]


def test_an_explicit_loss_weight_counts_as_a_reader_and_takes_split_0() -> None:
    text = """layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "f" type: "Power" bottom: "x" top: "y" loss_weight: 0.5 }
layer { name: "g" type: "Power" bottom: "y" top: "z" }
layer { name: "h" type: "Power" bottom: "x" top: "w" loss_weight: 0 }"""
    table = insert_splits(parse_net(text).layer)
    names = [e.name for e in table]
    assert names == ["input", "x_input_0_split", "f", "y_f_0_split", "g", "h"]
    assert table[1].tops == ("x_input_0_split_0", "x_input_0_split_1")
    assert table[3].tops == ("y_f_0_split_0", "y_f_0_split_1")
    assert table[4].bottoms == ("y_f_0_split_1",)  # split_0 feeds the loss


def _golden_indexes() -> list[Path]:
    paths = sorted(SHARED.glob("golden*/*/blobs_index.json"))
    return [p for p in paths if (p.parent / "deploy.prototxt").exists()]


@pytest.mark.parametrize("index_path", _golden_indexes() or [None], ids=lambda p: p and p.parent.name)
def test_layer_tables_equal_real_caffe(index_path: Path | None) -> None:
    if index_path is None:
        shared_path("golden")
        pytest.skip("no golden blobs_index.json with a deploy.prototxt")
    index = json.loads(index_path.read_text())
    table = insert_splits(load_net(index_path.parent / "deploy.prototxt", is_supported).layers)
    assert [e.name for e in table] == [layer["name"] for layer in index["layers"]]
    assert [list(e.bottoms) for e in table] == [layer["bottoms"] for layer in index["layers"]]
    assert [list(e.tops) for e in table] == [layer["tops"] for layer in index["layers"]]
    splits = [e.type for e in table if e.type == "Split"]
    assert splits == [layer["type"] for layer in index["layers"] if layer["type"] == "Split"]
    assert blob_order(table) == list(index["blobs"])


def test_net_lists_splits_and_their_tops_alias_the_source(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(BRANCHY)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=2)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    assert net._layer_names[1] == "data_input_0_split" and net.layers[1].type == "Split"
    assert net.layers[1].blobs == [] and len(net.layers[2].blobs) == 2
    assert net.layer_dict["conv1_relu1_0_split"].type == "Split"
    assert net._blob_names == list(net.blobs)
    assert "conv1_relu1_0_split_1" in net.blobs
    assert net.bottom_names["sum"] == ["a", "b", "data_input_0_split_1"]
    assert net.top_names["data_input_0_split"] == ["data_input_0_split_0", "data_input_0_split_1"]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 6, 6)).astype(np.float32)
    net.forward(data=x)
    split = net.blobs["conv1_relu1_0_split_1"]
    assert split.data is net.blobs["conv1"].data and split.shape == (2, 3, 6, 6)
    assert net.blobs["data_input_0_split_0"].data.min() < 0  # the input, shared
    out = net.forward(end="conv1_relu1_0_split")  # a Split's tops are what forward(end=) returns
    assert list(out) == ["conv1_relu1_0_split_0", "conv1_relu1_0_split_1"]
    np.testing.assert_array_equal(out["conv1_relu1_0_split_0"], net.blobs["conv1"].data)


def test_harmless_pycaffe_functions() -> None:
    types = caffe.layer_type_list()
    assert types == sorted(types) and {"Convolution", "Input", "Split", "Softmax"} <= set(types)
    assert caffe.init_log() is None and caffe.init_log(0, True) is None
    caffe.log("hello from a legacy script")
    caffe.set_random_seed(1701)
