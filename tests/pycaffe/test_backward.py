"""net.backward(): input blob diffs from the outputs' (or a layer's tops') diffs, checked against finite
differences of a numpy Caffe oracle in float64; force_backward honoured as Caffe does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.pycaffe.test_pycaffe import TINY_NET, caffemodel_arrays, random_input

FORCED = "force_backward: true\n" + TINY_NET


@pytest.fixture
def forced(tmp_path: Path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(FORCED)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=11)
    weights = {k: [np.asarray(a, np.float64) for a in v] for k, v in caffemodel_arrays(caffemodel).items()}
    return prototxt, caffemodel, weights


def _numeric_gradient(text: str, weights, x: np.ndarray, blob: str, seed: np.ndarray, points) -> list[float]:
    def f(values: np.ndarray) -> float:
        return float((caffe_reference.forward(text, weights, {"data": values})[blob] * seed).sum())

    grads = []
    for index in points:
        eps = 1e-2  # the oracle stores float32 blobs: a larger step keeps rounding out of the quotient
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grads.append((f(up) - f(down)) / (2 * eps))
    return grads


def _points(shape, count: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, d)) for d in shape) for _ in range(count)]


def test_data_gradient_matches_finite_differences(forced) -> None:
    prototxt, caffemodel, weights = forced
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = random_input((2, 3, 8, 8), seed=1)
    net.forward(data=x)
    seed = np.zeros((2, 5), np.float32)
    seed[0, 2] = 1.0
    seed[1, 4] = -0.5
    out = net.backward(prob=seed)
    assert list(out) == ["data"] and out["data"] is net.blobs["data"].diff
    points = _points(x.shape, 12, seed=2)
    expected = _numeric_gradient(FORCED, weights, x.astype(np.float64), "prob", seed, points)
    got = [float(out["data"][p]) for p in points]
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-5)
    assert np.abs(out["data"]).max() > 0


def test_backward_from_a_layer_as_deep_dream_does(forced) -> None:
    prototxt, caffemodel, weights = forced
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = random_input((2, 3, 8, 8), seed=3)
    net.blobs["data"].data[...] = x
    net.forward(end="pool1")
    dst = net.blobs["pool1"]
    dst.diff[:] = dst.data  # the L2 objective of deep dream
    net.backward(start="pool1")
    gradient = net.blobs["data"].diff
    truncated = FORCED.split('layer { name: "fc"')[0]
    points = _points(x.shape, 10, seed=4)
    seed = dst.data.astype(np.float64)
    expected = _numeric_gradient(truncated, weights, x.astype(np.float64), "pool1", seed, points)
    np.testing.assert_allclose([float(gradient[p]) for p in points], expected, rtol=2e-3, atol=1e-5)


def test_without_force_backward_nothing_is_computed(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_NET)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=12)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=random_input((2, 3, 8, 8), seed=5))
    out = net.backward(prob=np.ones((2, 5), np.float32))
    assert not out["data"].any()  # a net without loss needs no backward unless forced, as in Caffe


def test_backward_misuse_is_refused(forced) -> None:
    prototxt, caffemodel, _ = forced
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=random_input((2, 3, 8, 8), seed=6))
    with pytest.raises(caffe.PycaffeError, match="not an output"):
        net.backward(fc=np.ones((2, 5), np.float32))
    with pytest.raises(caffe.PycaffeError, match="no blob of that name"):
        net.backward(diffs=["nope"])
    with pytest.raises(caffe.PycaffeError, match="end comes after start"):
        net.backward(start="conv1", end="fc")
    with pytest.raises(caffe.PycaffeError, match="no layer of that name"):
        net.backward(start="nope")


@pytest.mark.parametrize("folder", ["googlenet_cam", "squeezenet_v1.1"])
def test_golden_net_gradient_matches_finite_differences(folder: str, tmp_path: Path) -> None:
    from tests.helpers import shared_path

    root = shared_path("golden", folder)
    prototxt = tmp_path / "deploy.prototxt"
    text = (root / "deploy.prototxt").read_text()
    prototxt.write_text(text if "force_backward: true" in text else "force_backward: true\n" + text)
    net = caffe.Net(str(prototxt), str(root / "weights.caffemodel"), caffe.TEST)
    x = np.load(root / "input.npy").astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    output = net.outputs[0]
    prob = net.forward(data=x)[output].copy()
    seed = np.random.default_rng(0).normal(0, 1, prob.shape).astype(np.float32)
    gradient = net.backward(**{output: seed})["data"].astype(np.float64)

    def f(values: np.ndarray) -> float:
        return float((net.forward(data=values)[output].astype(np.float64) * seed).sum())

    # the derivative along the gradient's own direction is its norm; steps of 0.25 in a unit direction over
    # ~150k inputs spanning +-128 stay within the piecewise-linear pieces and far above float32 rounding
    norm = float(np.linalg.norm(gradient))
    direction = (gradient / norm).astype(np.float32)
    step = 0.25
    numeric = (f(x + step * direction) - f(x - step * direction)) / (2 * step)
    assert norm > 0 and abs(numeric - norm) <= 1e-2 * norm, (numeric, norm)


GOLDEN_CHECKS = {
    # folder: (blob, the layer after its writers, parameters whose diffs are checked)
    "squeezenet_v1.1": ("fire9/concat", "drop9", [("conv1", 0), ("fire9/expand3x3", 0), ("conv10", 1)]),
    "googlenet_cam": (
        "inception_4e/output",
        "CAM_conv",
        [("conv1/7x7_s2", 0), ("CAM_conv", 0), ("CAM_fc", 0)],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted(GOLDEN_CHECKS))
def test_golden_net_blob_and_param_diffs_match_finite_differences(folder: str, tmp_path: Path) -> None:
    """Directional derivatives (along the gradient itself, whose value is its norm) of a middle blob, run
    with forward(start=), and of parameters, run after editing them (real Caffe weights and input)."""
    from tests.helpers import shared_path

    root = shared_path("golden", folder)
    blob, after, params = GOLDEN_CHECKS[folder]
    prototxt = tmp_path / "deploy.prototxt"
    text = (root / "deploy.prototxt").read_text()
    prototxt.write_text(text if "force_backward: true" in text else "force_backward: true\n" + text)
    net = caffe.Net(str(prototxt), str(root / "weights.caffemodel"), caffe.TEST)
    x = np.load(root / "input.npy").astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    prob = net.forward(data=x)["prob"].copy()
    seed = np.random.default_rng(0).normal(0, 1, prob.shape).astype(np.float32)
    net.backward(prob=seed)
    diffs = {blob: net.blobs[blob].diff.astype(np.float64)}
    param_diffs = {key: net.params[key[0]][key[1]].diff.astype(np.float64) for key in params}
    value = net.blobs[blob].data.copy()

    def directional(gradient: np.ndarray, base: np.ndarray, run, step: float) -> tuple[float, float]:
        norm = float(np.linalg.norm(gradient))
        direction = (gradient / norm).astype(np.float32)
        up, down = run(base + step * direction), run(base - step * direction)
        return (up - down) / (2 * step), norm

    def from_blob(v: np.ndarray) -> float:
        net.blobs[blob].data[...] = v
        return float((net.forward(start=after)["prob"].astype(np.float64) * seed).sum())

    # blob values span hundreds; parameters are small: steps that stay within ReLU's linear pieces
    numeric, norm = directional(diffs[blob], value, from_blob, 1e-3 * float(np.linalg.norm(value)))
    assert norm > 0 and abs(numeric - norm) <= 2e-2 * norm, (blob, numeric, norm)
    for layer, index in params:
        original = net.params[layer][index].data.copy()

        def from_param(v: np.ndarray, layer=layer, index=index) -> float:
            net.params[layer][index].data[...] = v
            return float((net.forward(data=x)["prob"].astype(np.float64) * seed).sum())

        step = min(1e-3, 1e-2 / float(np.linalg.norm(param_diffs[(layer, index)])))  # softmax curvature
        numeric, norm = directional(param_diffs[(layer, index)], original, from_param, step)
        net.params[layer][index].data[...] = original
        assert norm > 0 and abs(numeric - norm) <= 1e-2 * norm, (layer, index, numeric, norm)


# The late pooling's kernel (6) is larger than the conv output of a 4x4 input: converting the whole net for
# that input fails, as Caffe's Reshape of that layer would, but Caffe's BackwardFromTo never touches it.
OCTAVE = """force_backward: true
name: "octave"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool_big" type: "Pooling" bottom: "conv1" top: "pool_big"
  pooling_param { pool: MAX kernel_size: 6 stride: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool_big" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_backward_start_touches_only_layers_up_to_start(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(OCTAVE)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=21)
    weights = {k: [np.asarray(a, np.float64) for a in v] for k, v in caffemodel_arrays(caffemodel).items()}
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = random_input((1, 3, 4, 4), seed=22)
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    net.forward(end="relu1")
    dst = net.blobs["conv1"]
    dst.diff[:] = dst.data
    net.backward(start="relu1")
    gradient = net.blobs["data"].diff
    truncated = OCTAVE.split('layer { name: "pool_big"')[0].replace("input_dim: 8", "input_dim: 4")
    points = _points(x.shape, 10, seed=23)
    seed = dst.data.astype(np.float64)
    expected = _numeric_gradient(truncated, weights, x.astype(np.float64), "conv1", seed, points)
    np.testing.assert_allclose([float(gradient[p]) for p in points], expected, rtol=2e-3, atol=1e-5)
    assert np.abs(gradient).max() > 0


BOUNDS_NET = """force_backward: true
name: "bounds"
input: "data" input_shape { dim: 1 dim: 1 dim: 1 dim: 9 }
layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: -1 max: 1 } }
layer { name: "relu6" type: "ReLU6" bottom: "data" top: "relu6" }
"""


def test_clip_and_relu6_pass_the_gradient_as_caffe_at_their_bounds(tmp_path: Path) -> None:
    """Caffe's clip_layer.cpp passes the diff where min <= x <= max; the forks' ReLU6 where 0 < x < 6."""
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(BOUNDS_NET)
    net = caffe.Net(str(prototxt), caffe.TEST)
    x = np.array([-2, -1, -0.5, 0, 0.5, 1, 2, 6, 7], np.float32).reshape(1, 1, 1, 9)
    net.forward(data=x)
    seed = np.arange(1, 10, dtype=np.float32).reshape(x.shape)
    clip = net.backward(clip=seed, relu6=np.zeros_like(seed))["data"].copy()
    relu6 = net.backward(clip=np.zeros_like(seed), relu6=seed)["data"].copy()
    np.testing.assert_array_equal(clip, seed * ((x >= -1) & (x <= 1)))
    np.testing.assert_array_equal(relu6, seed * ((x > 0) & (x < 6)))


def test_backward_after_reshape_without_forward_is_refused_in_one_line(forced) -> None:
    prototxt, caffemodel, _ = forced
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=random_input((2, 3, 8, 8), seed=31))
    net.blobs["data"].reshape(3, 3, 8, 8)
    net.reshape()
    with pytest.raises(caffe.PycaffeError, match=r"reshaped to \(3, 3, 8, 8\).*call net.forward\(\) first"):
        net.backward(prob=np.ones((3, 5), np.float32))
    net.forward(data=random_input((3, 3, 8, 8), seed=32))
    assert net.backward(prob=np.ones((3, 5), np.float32))["data"].shape == (3, 3, 8, 8)


def test_onnxruntime_failures_in_backward_are_one_line_errors(forced) -> None:
    from camcaffe.pycaffe.backward import BackwardError

    prototxt, caffemodel, _ = forced
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=random_input((2, 3, 8, 8), seed=33))
    net.backward(prob=np.ones((2, 5), np.float32))
    (model,) = net._compiled.gradients.values()
    feeds = {name: np.zeros((1, 1), np.float32) for name in [*model.inputs, *model.seeds.values()]}
    with pytest.raises(BackwardError, match="backward failed in ONNX Runtime") as caught:
        model.run("cpu", str(prototxt), feeds)
    assert "\n" not in str(caught.value)
