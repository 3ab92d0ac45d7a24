"""caffe.draw: without pydot a clear error; with pydot (optional) the graph draw.py builds."""

from __future__ import annotations

import sys

import pytest

import camcaffe as caffe
from camcaffe import layers as L
from camcaffe import params as P


def _net():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, stride=2, pad=1, param=[dict(lr_mult=2)])
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.AVE, kernel_size=2, stride=2)
    n.fc = L.InnerProduct(n.pool1, num_output=5)
    net = n.to_proto()
    net.name = "drawn"
    return net


def test_labels_follow_draw_py() -> None:
    layers = {layer.name: layer for layer in _net().layer}
    label = caffe.draw.get_layer_label(layers["conv1"], "LR", display_lrm=True)
    assert label == r'"conv1\n(Convolution)\nkernel size: 3\nstride: 2\npad: 1\nlr mult: 2.0, 1.0"'
    assert (
        caffe.draw.get_layer_label(layers["pool1"], "TB")
        == '"pool1 (Pooling AVE) kernel size: 2 stride: 2 pad: 0"'
    )
    assert (
        caffe.draw.get_edge_label(layers["fc"]) == "5" and caffe.draw.get_edge_label(layers["relu1"]) == '""'
    )
    assert caffe.draw.choose_color_by_layertype("Pooling") == "#FF9900"
    with pytest.raises(caffe.PycaffeError, match="learning rate"):
        caffe.draw.get_layer_lr_mult(layers["relu1"])


def test_without_pydot_the_error_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "pydot", None)
    monkeypatch.setitem(sys.modules, "pydotplus", None)
    with pytest.raises(caffe.PycaffeError, match="pip install pydot"):
        caffe.draw.draw_net_to_file(_net(), str(tmp_path / "net.png"))


def test_graph_with_pydot() -> None:
    pytest.importorskip("pydot")
    graph = caffe.draw.get_pydot_graph(_net(), "LR")
    assert graph.get_name() == "drawn" and graph.get("rankdir") == "LR"
    nodes = {node.get_name().strip('"') for node in graph.get_nodes()}
    assert {"data", "conv1", "pool1", "fc"} <= nodes  # blobs
    text = graph.to_string()
    assert "#90EE90" in text  # the in-place ReLU
    assert "#FF5050" in text and "#CC33FF" in text and "octagon" in text
    assert len(graph.get_edges()) == 9  # one per bottom and per top: 1 + 2 + 2 + 2 + 2
