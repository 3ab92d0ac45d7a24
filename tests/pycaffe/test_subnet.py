"""forward(start=..., end=...) as Caffe's ForwardFromTo: layers before start do not run and their blobs keep
their current values, layers after end do not run, in-place blobs hold the last writer in the range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.helpers import assert_close, shared_path
from tests.pycaffe.test_pycaffe import TINY_NET, caffemodel_arrays, random_input

# TINY_NET's layers after conv1, fed with a "conv1" input of the same shape
TAIL_FROM_BN = """input: "conv1"
input_dim: 2
input_dim: 4
input_dim: 8
input_dim: 8
""" + TINY_NET.split('layer { name: "conv1"', 1)[1].split("\n", 2)[2]


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[caffe.Net, dict[str, list[np.ndarray]]]:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_NET)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=7)
    return caffe.Net(str(prototxt), str(caffemodel), caffe.TEST), caffemodel_arrays(caffemodel)


def test_start_reads_the_current_blob_values(tiny) -> None:
    net, weights = tiny
    assert TAIL_FROM_BN.lstrip().startswith('input: "conv1"') and '"bn1"' in TAIL_FROM_BN
    features = random_input((2, 4, 8, 8), seed=1)
    net.blobs["conv1"].data[...] = features
    out = net.forward(start="bn1")
    reference = caffe_reference.forward(TAIL_FROM_BN, weights, {"conv1": features})
    assert list(out) == ["prob"]
    for name in ("conv1", "pool1", "fc", "prob"):
        assert_close(net.blobs[name].data, reference[name], name)
    assert not net.blobs["data"].data.any()  # nothing before start ran or was written


def test_ranges_compose_to_the_full_forward(tiny) -> None:
    net, weights = tiny
    x = random_input((2, 3, 8, 8), seed=2)
    full = caffe_reference.forward(TINY_NET, weights, {"data": x})
    net.forward(data=x, end="pool1")
    for name in ("conv1", "pool1"):
        assert_close(net.blobs[name].data, full[name], name)
    assert not net.blobs["fc"].data.any() and not net.blobs["prob"].data.any()
    out = net.forward(start="fc", blobs=["fc"])
    assert list(out) == ["prob", "fc"]
    assert_close(out["prob"], full["prob"], "prob")
    assert_close(out["fc"], full["fc"], "fc")


def test_end_stops_an_in_place_chain_where_caffe_does(tiny) -> None:
    net, weights = tiny
    x = random_input((2, 3, 8, 8), seed=3)
    out = net.forward(data=x, end="bn1")
    assert list(out) == ["conv1"]
    truncated = TINY_NET.split('layer { name: "scale1"')[0]
    reference = caffe_reference.forward(truncated, weights, {"data": x})
    assert_close(out["conv1"], reference["conv1"], "conv1 after bn1")
    assert out["conv1"].min() < 0  # not yet through the ReLU


def test_a_range_runs_again_on_its_own_output(tiny) -> None:
    net, weights = tiny
    x = random_input((2, 3, 8, 8), seed=4)
    net.forward(data=x, end="scale1")
    once = net.blobs["conv1"].data.copy()
    net.forward(start="scale1", end="scale1")  # Caffe applies the in-place Scale again
    gamma, beta = (w.reshape(1, -1, 1, 1) for w in weights["scale1"])
    np.testing.assert_allclose(net.blobs["conv1"].data, once * gamma + beta, rtol=1e-5, atol=1e-5)


def test_ranges_follow_parameter_edits_and_input_shapes(tiny) -> None:
    net, weights = tiny
    features = random_input((2, 4, 8, 8), seed=5)
    net.blobs["conv1"].data[...] = features
    before = net.forward(start="bn1")["prob"].copy()
    net.params["fc"][0].data[...] *= 2.0
    net.blobs["conv1"].data[...] = features  # the in-place chain bn1..relu1 overwrote it
    after = net.forward(start="bn1")["prob"].copy()
    weights["fc"][0] = weights["fc"][0] * 2.0
    reference = caffe_reference.forward(TAIL_FROM_BN, weights, {"conv1": features})
    assert_close(after, reference["prob"], "prob after the edit")
    assert not np.allclose(before, after)
    net.blobs["data"].reshape(1, 3, 8, 8)
    x = random_input((1, 3, 8, 8), seed=6)
    assert net.forward(data=x, end="fc")["fc"].shape == (1, 5)
    full = caffe_reference.forward(TINY_NET, weights, {"data": x})
    assert_close(net.blobs["fc"].data, full["fc"], "fc for batch 1")


def test_range_errors_name_the_problem(tiny) -> None:
    net, _ = tiny
    with pytest.raises(caffe.PycaffeError, match="no layer of that name"):
        net.forward(start="nope")
    with pytest.raises(caffe.PycaffeError, match="start comes after end"):
        net.forward(start="prob", end="conv1")


def test_forward_all_batches_a_range(tiny) -> None:
    net, weights = tiny
    images = random_input((5, 3, 8, 8), seed=7)
    everything = net.forward_all(blobs=["pool1"], data=images)
    assert set(everything) == {"prob", "pool1"}
    assert everything["prob"].shape == (5, 5) and everything["pool1"].shape == (5, 4, 1, 1)
    reference = caffe_reference.forward(TINY_NET, weights, {"data": images})
    assert_close(everything["prob"], reference["prob"], "forward_all prob")
    assert_close(everything["pool1"], reference["pool1"], "forward_all pool1")


def test_start_from_a_split_equals_real_caffe() -> None:
    root = shared_path("golden", "googlenet_cam")
    golden = np.load(root / "blobs.npz")
    index = json.loads((root / "blobs_index.json").read_text())
    net = caffe.Net(str(root / "deploy.prototxt"), str(root / "weights.caffemodel"), caffe.TEST)
    net.blobs["inception_4d/output"].data[...] = golden["inception_4d/output"]
    start = "inception_4d/output_inception_4d/output_0_split"
    assert start in net._layer_names and start in [layer["name"] for layer in index["layers"]]
    out = net.forward(start=start)
    assert_close(out["prob"], golden["prob"], "prob from inception_4d")
    assert_close(net.blobs["CAM_conv"].data, golden["CAM_conv"], "CAM_conv from inception_4d")
    assert not net.blobs["data"].data.any() and not net.blobs["conv1/7x7_s2"].data.any()
    net.blobs["data"].data[...] = np.load(root / "input.npy")
    out = net.forward(end="inception_4d/output")
    assert list(out) == ["inception_4d/output"]
    assert_close(out["inception_4d/output"], golden["inception_4d/output"], "inception_4d/output")
