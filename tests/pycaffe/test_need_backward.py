"""Caffe's backward decisions for nets with loss_weight tops (net.cpp Init, Layer::SetLossWeights): the
loss weight is the top's diff from setup, and without force_backward the layers under a loss still run
backward where parameters learn, but input blobs get no diff."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.caffe.prototxt import parse_prototxt
from camcaffe.pycaffe.need_backward import backward_needs, loss_weights
from camcaffe.pycaffe.splits import insert_splits

LOSS_NET = """name: "lw"
{force}
input: "data" input_shape {{ dim: 2 dim: 3 }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" {ip_param} inner_product_param {{ num_output: 4 }} }}
layer {{ name: "red" type: "Reduction" bottom: "ip" top: "loss" loss_weight: 2
  reduction_param {{ operation: {op} }} }}
"""


def _net(tmp_path: Path, force: bool, op: str = "SUMSQ", ip_param: str = "") -> caffe.Net:
    prototxt = tmp_path / "lw.prototxt"
    text = LOSS_NET.format(force="force_backward: true" if force else "", op=op, ip_param=ip_param)
    prototxt.write_text(text)
    caffe.set_random_seed(3)
    return caffe.Net(str(prototxt), caffe.TEST)


X = np.arange(6, dtype=np.float32).reshape(2, 3) / 5


def test_loss_weight_is_the_top_diff_and_seeds_backward(tmp_path: Path) -> None:
    net = _net(tmp_path, force=True)
    assert float(net.blobs["loss"].diff) == 2.0  # Layer::SetLossWeights, before any backward
    net.forward(data=X)
    net.clear_param_diffs()
    got = net.backward()["data"]
    w = net.params["ip"][0].data.astype(np.float64)
    b = net.params["ip"][1].data.astype(np.float64)
    ip = X @ w.T + b
    np.testing.assert_allclose(got, 2 * 2 * ip @ w, rtol=1e-5, atol=1e-6)  # d(2 * sum ip^2) / d data
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * 2 * ip.T @ X, rtol=1e-5, atol=1e-6)


def test_without_force_backward_layers_under_a_loss_still_learn(tmp_path: Path) -> None:
    net = _net(tmp_path, force=False, op="SUM")
    net.forward(data=X)
    net.clear_param_diffs()
    got = net.backward()["data"]
    np.testing.assert_array_equal(net.blobs["ip"].diff, np.full((2, 4), 2.0, np.float32))
    np.testing.assert_allclose(net.params["ip"][0].diff, np.tile(2 * X.sum(0), (4, 1)), rtol=1e-6)
    np.testing.assert_allclose(net.params["ip"][1].diff, np.full(4, 4.0), rtol=1e-6)
    assert not got.any()  # the input blob needs no backward without force_backward


def test_frozen_parameters_under_a_loss_need_no_backward(tmp_path: Path) -> None:
    net = _net(tmp_path, force=False, op="SUM", ip_param="param { lr_mult: 0 } param { lr_mult: 0 }")
    net.forward(data=X)
    net.backward()
    assert not net.blobs["ip"].diff.any()


@pytest.mark.parametrize("force", [True, False])
def test_needs_follow_net_cpp(force: bool) -> None:
    text = """name: "n"
input: "data" input_shape { dim: 1 dim: 3 }
layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }
layer { name: "ip" type: "InnerProduct" bottom: "r" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "side" type: "InnerProduct" bottom: "r" top: "side" inner_product_param { num_output: 2 } }
layer { name: "red" type: "Reduction" bottom: "ip" top: "loss" loss_weight: 1 }
"""
    param = parse_prototxt(text, "n.prototxt")
    table = insert_splits(list(param.layer))
    names = [entry.name for entry in table]
    needs = backward_needs(table, {"ip": 2, "side": 2}, force)
    ran = {names[i] for i in needs.layers}
    assert loss_weights(table) == {(names.index("red"), 0): 1.0}
    if force:
        assert ran == set(names) - {"input"}
    else:  # relu: nothing below learns; side: not under the loss
        assert ran == {"ip", "red"}
        assert (names.index("ip"), 0) not in needs.bottoms and (names.index("red"), 0) in needs.bottoms


def test_frozen_parameters_keep_their_diff_under_force_backward(tmp_path: Path) -> None:
    """Caffe sets param_propagate_down from lr_mult != 0 whatever force_backward says."""
    net = _net(tmp_path, force=True, ip_param="param { lr_mult: 0 } param { lr_mult: 1 }")
    net.forward(data=X)
    net.clear_param_diffs()
    got = net.backward()["data"]
    w = net.params["ip"][0].data.astype(np.float64)
    ip = X @ w.T + net.params["ip"][1].data
    assert not net.params["ip"][0].diff.any()
    np.testing.assert_allclose(net.params["ip"][1].diff, 2 * 2 * ip.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, 2 * 2 * ip @ w, rtol=1e-5, atol=1e-6)


def test_a_loss_top_read_by_another_layer_carries_its_weight_on_the_first_split_top(tmp_path: Path) -> None:
    """insert_splits.cpp gives the loss weight to the Split's first top; the other reader is under no loss."""
    prototxt = tmp_path / "split.prototxt"
    prototxt.write_text(
        'name: "ls"\ninput: "data" input_shape { dim: 2 dim: 3 }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }\n'
        'layer { name: "red" type: "Reduction" bottom: "ip" top: "loss" loss_weight: 2 reduction_param { axis: 1 } }\n'
        'layer { name: "sc" type: "Power" bottom: "loss" top: "out" power_param { scale: 3 } }\n'
    )
    net = caffe.Net(str(prototxt), caffe.TEST)
    np.testing.assert_array_equal(net.blobs["loss_red_0_split_0"].diff, [2.0, 2.0])
    net.forward(data=X)
    net.clear_param_diffs()
    net.backward(out=np.ones(2, np.float32))
    np.testing.assert_array_equal(net.blobs["loss_red_0_split_1"].diff, [0.0, 0.0])  # sc does not run
    np.testing.assert_array_equal(net.blobs["ip"].diff, np.full((2, 4), 2.0, np.float32))
    np.testing.assert_allclose(net.params["ip"][0].diff, np.tile(2 * X.sum(0), (4, 1)), rtol=1e-6)


def test_propagate_down_false_keeps_the_diff_from_that_bottom_and_above(tmp_path: Path) -> None:
    """Without force_backward, `propagate_down: false` leaves a bottom's diff unwritten: the layer that
    wrote it runs backward from the diff its top holds (zero), so nothing reaches x through y."""
    prototxt = tmp_path / "pd.prototxt"
    prototxt.write_text(
        'name: "pd"\ninput: "data" input_shape { dim: 2 dim: 3 }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "x" inner_product_param { num_output: 4 } }\n'
        'layer { name: "pow" type: "Power" bottom: "x" top: "y" power_param { scale: 3 } }\n'
        'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "y" top: "z" propagate_down: true '
        "propagate_down: false }\n"
        'layer { name: "red" type: "Reduction" bottom: "z" top: "loss" loss_weight: 1 }\n'
    )
    net = caffe.Net(str(prototxt), caffe.TEST)
    net.forward(data=X)
    net.clear_param_diffs()
    net.backward()
    assert not net.blobs["y"].diff.any()
    np.testing.assert_array_equal(net.blobs["x"].diff, np.ones((2, 4), np.float32))
    np.testing.assert_allclose(net.params["ip"][0].diff, np.tile(X.sum(0), (4, 1)), rtol=1e-6)
