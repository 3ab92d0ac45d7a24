"""net.backward() as Caffe's BackwardFromTo: the diff of every blob (in-place chains, Split tops, Flatten's
shared diff), parameter diffs (accumulated), start= / end=, written output diffs and forward_backward_all,
each gradient checked against float64 finite differences of the numpy Caffe oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.pycaffe.test_pycaffe import caffemodel_arrays

LAYERS = {
    "conv1": 'type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 '
    "stride: 2 pad: 1 dilation: 2 group: 2 }",
    "prelu1": 'type: "PReLU" bottom: "conv1" top: "conv1"',
    "deconv1": 'type: "Deconvolution" bottom: "conv1" top: "up" convolution_param { num_output: 4 '
    "kernel_size: 3 stride: 2 pad: 1 group: 2 }",
    "scale1": 'type: "Scale" bottom: "up" top: "up" scale_param { bias_term: true }',
    "bias1": 'type: "Bias" bottom: "up" top: "biased"',
    "conv2": 'type: "Convolution" bottom: "biased" top: "conv2" convolution_param { num_output: 3 kernel_size: 1 }',
    "flat": 'type: "Flatten" bottom: "conv2" top: "flat"',
    "fc": 'type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 5 }',
    "fct": 'type: "InnerProduct" bottom: "conv2" top: "fct" inner_product_param { num_output: 5 transpose: true }',
    "sum": 'type: "Eltwise" bottom: "fc" bottom: "fct" top: "out"',
}
SHAPE = (2, 4, 9, 9)
SPLIT_0, SPLIT_1 = "conv2_conv2_0_split_0", "conv2_conv2_0_split_1"


def _text(layers: dict[str, str], inputs: dict[str, tuple[int, ...]], force: bool = True) -> str:
    lines = ["force_backward: true"] if force else []
    lines.append('name: "grad_net"')
    for name, shape in inputs.items():
        lines.append(f'input: "{name}"')
        lines.append("input_shape { " + " ".join(f"dim: {d}" for d in shape) + " }")
    lines += [f'layer {{ name: "{name}" {body} }}' for name, body in layers.items()]
    return "\n".join(lines) + "\n"


def _tail(
    first: str, inputs: dict[str, tuple[int, ...]], rename: dict[str, dict[str, str]] | None = None
) -> str:
    """The layers from `first` on, fed by `inputs` (a layer's bottom renamed per `rename`)."""
    names = list(LAYERS)
    layers = {name: LAYERS[name] for name in names[names.index(first) :]}
    for layer, mapping in (rename or {}).items():
        for old, new in mapping.items():
            layers[layer] = layers[layer].replace(f'bottom: "{old}"', f'bottom: "{new}"', 1)
    return _text(layers, inputs)


@pytest.fixture
def built(tmp_path: Path):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(_text(LAYERS, {"data": SHAPE}))
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    weights = {k: [np.asarray(a, np.float64) for a in v] for k, v in caffemodel_arrays(caffemodel).items()}
    x = np.random.default_rng(3).uniform(-2, 2, SHAPE)
    seed = np.random.default_rng(4).normal(0, 1, (2, 5))
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    return prototxt, net, weights, x, seed


def _objective(text: str, weights, inputs: dict[str, np.ndarray], seed: np.ndarray) -> float:
    out = caffe_reference.forward(text, weights, inputs, dtype=np.float64)["out"]
    return float((out * seed).sum())


def _check_numeric(analytic: np.ndarray, value: np.ndarray, f, count: int = 6, rng_seed: int = 0) -> None:
    """Central differences (float64, step 1e-4) at sampled coordinates of `value`."""
    rng = np.random.default_rng(rng_seed)
    points = [tuple(int(rng.integers(0, d)) for d in value.shape) for _ in range(count)]
    numeric = []
    for point in points:
        up, down = value.copy(), value.copy()
        up[point] += 1e-4
        down[point] -= 1e-4
        numeric.append((f(up) - f(down)) / 2e-4)
    np.testing.assert_allclose([float(analytic[p]) for p in points], numeric, rtol=1e-3, atol=1e-4)


def _blobs(text: str, weights, x: np.ndarray) -> dict[str, np.ndarray]:
    return caffe_reference.forward(text, weights, {"data": x}, dtype=np.float64)


def test_every_blob_diff_matches_finite_differences(built) -> None:
    prototxt, net, weights, x, seed = built
    net.forward(data=x.astype(np.float32))
    net.backward(out=seed.astype(np.float32))
    full = _text(LAYERS, {"data": SHAPE})
    blobs = _blobs(full, weights, x)
    _check_numeric(net.blobs["data"].diff, x, lambda v: _objective(full, weights, {"data": v}, seed))
    # an in-place chain's blob holds the diff at its bottom: conv1 before PReLU, up before Scale
    pre_prelu = _blobs(_text({"conv1": LAYERS["conv1"]}, {"data": SHAPE}), weights, x)["conv1"]
    tail = _tail("prelu1", {"conv1": pre_prelu.shape})
    _check_numeric(
        net.blobs["conv1"].diff, pre_prelu, lambda v: _objective(tail, weights, {"conv1": v}, seed)
    )
    head = {k: LAYERS[k] for k in ("conv1", "prelu1", "deconv1")}
    pre_scale = _blobs(_text(head, {"data": SHAPE}), weights, x)["up"]
    tail = _tail("scale1", {"up": pre_scale.shape})
    _check_numeric(net.blobs["up"].diff, pre_scale, lambda v: _objective(tail, weights, {"up": v}, seed))
    tail = _tail("conv2", {"biased": blobs["biased"].shape})
    _check_numeric(
        net.blobs["biased"].diff, blobs["biased"], lambda v: _objective(tail, weights, {"biased": v}, seed)
    )
    # each Split top has its own diff; the source's is their sum; Flatten's top shares its bottom's diff
    conv2 = blobs["conv2"]
    tail = _tail(
        "flat", {"a": conv2.shape, "b": conv2.shape}, {"flat": {"conv2": "a"}, "fct": {"conv2": "b"}}
    )
    _check_numeric(
        net.blobs[SPLIT_0].diff, conv2, lambda v: _objective(tail, weights, {"a": v, "b": conv2}, seed)
    )
    _check_numeric(
        net.blobs[SPLIT_1].diff, conv2, lambda v: _objective(tail, weights, {"a": conv2, "b": v}, seed)
    )
    split = net.blobs[SPLIT_0].diff + net.blobs[SPLIT_1].diff
    np.testing.assert_allclose(net.blobs["conv2"].diff, split, rtol=1e-6, atol=1e-7)
    assert not np.allclose(net.blobs[SPLIT_0].diff, net.blobs[SPLIT_1].diff)
    np.testing.assert_array_equal(net.blobs["flat"].diff, net.blobs[SPLIT_0].diff.reshape(2, -1))
    for name in ("fc", "fct", "out"):  # Eltwise SUM passes its top diff to both bottoms
        np.testing.assert_allclose(net.blobs[name].diff, seed, rtol=1e-6)


def test_param_diffs_match_finite_differences(built) -> None:
    prototxt, net, weights, x, seed = built
    net.forward(data=x.astype(np.float32))
    net.backward(out=seed.astype(np.float32))
    full = _text(LAYERS, {"data": SHAPE})
    checked = 0
    for layer, blobs in weights.items():
        for index, value in enumerate(blobs):

            def f(v, layer=layer, index=index):
                changed = {**weights, layer: [v if i == index else b for i, b in enumerate(weights[layer])]}
                return _objective(full, changed, {"data": x}, seed)

            _check_numeric(net.params[layer][index].diff, value, f, count=4, rng_seed=checked)
            assert net.layer_dict[layer].blobs[index].diff is net.params[layer][index].diff
            checked += 1
    assert checked == 14  # conv1 2, prelu1 1, deconv1 2, scale1 2, bias1 1, conv2 2, fc 2, fct 2


def test_param_diffs_accumulate_as_in_caffe(built) -> None:
    prototxt, net, weights, x, seed = built
    net.forward(data=x.astype(np.float32))
    net.backward(out=seed.astype(np.float32))
    first = {k: [b.diff.copy() for b in v] for k, v in net.params.items()}
    data_diff = net.blobs["data"].diff.copy()
    net.backward()  # the output diff is still set: the same gradients, added to the parameters' diffs
    np.testing.assert_array_equal(net.blobs["data"].diff, data_diff)  # blob diffs are overwritten
    for layer, blobs in net.params.items():
        for blob, before in zip(blobs, first[layer], strict=True):
            np.testing.assert_allclose(blob.diff, 2 * before, rtol=1e-5, atol=1e-7)
    net.clear_param_diffs()
    assert not any(b.diff.any() for v in net.params.values() for b in v)
    # batch 1: Scale writes its factor's gradient over the old one (scale_layer.cpp), its bias adds up
    net.blobs["data"].reshape(1, *SHAPE[1:])
    net.forward(data=x[:1].astype(np.float32))
    net.backward(out=seed[:1].astype(np.float32))
    once = [b.diff.copy() for b in net.params["scale1"]]
    net.backward()
    np.testing.assert_allclose(net.params["scale1"][0].diff, once[0], rtol=1e-6)
    np.testing.assert_allclose(net.params["scale1"][1].diff, 2 * once[1], rtol=1e-5)


def test_written_output_diff_then_backward_without_arguments(built) -> None:
    prototxt, net, weights, x, seed = built
    net.forward(data=x.astype(np.float32))
    net.blobs["out"].diff[...] = seed  # the deep-dream / saliency idiom
    returned = net.backward()
    expected = net.blobs["data"].diff.copy()
    assert list(returned) == ["data"] and returned["data"] is net.blobs["data"].diff
    net.clear_param_diffs()
    net.blobs["data"].diff[...] = 0
    net.backward(out=seed.astype(np.float32))
    np.testing.assert_array_equal(net.blobs["data"].diff, expected)
    assert expected.any()


def test_end_stops_at_a_middle_layer_and_start_at_an_in_place_bottom(built) -> None:
    prototxt, net, weights, x, seed = built
    net.forward(data=x.astype(np.float32))
    for name in ("data", "conv1", "up"):
        net.blobs[name].diff[...] = 7.0
    returned = net.backward(end="conv2", out=seed.astype(np.float32))
    assert list(returned) == ["conv2"]  # pycaffe returns the blob named like the end layer
    for name in ("data", "conv1", "up"):  # below the end layer: untouched
        assert (net.blobs[name].diff == 7.0).all()
    assert net.blobs["biased"].diff.any()  # the end layer's bottom is written
    assert not net.params["deconv1"][0].diff.any() and net.params["conv2"][0].diff.any()
    # start at conv1 with PReLU (in place) after it not run: conv1's blob diff seeds conv1 itself
    net.clear_param_diffs()
    top = np.random.default_rng(9).normal(0, 1, net.blobs["conv1"].shape)
    net.blobs["conv1"].diff[...] = top
    net.backward(start="conv1")
    head = _text({"conv1": LAYERS["conv1"]}, {"data": SHAPE})

    def f(v):
        return float(
            (caffe_reference.forward(head, weights, {"data": v}, dtype=np.float64)["conv1"] * top).sum()
        )

    _check_numeric(net.blobs["data"].diff, x, f)
    assert not net.params["prelu1"][0].diff.any() and net.params["conv1"][0].diff.any()


def test_forward_backward_all_batches_like_pycaffe(built) -> None:
    prototxt, net, weights, x, seed = built
    rng = np.random.default_rng(6)
    images = rng.uniform(-2, 2, (5, *SHAPE[1:])).astype(np.float32)
    seeds = rng.normal(0, 1, (5, 5)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=images, out=seeds)
    assert set(outs) == {"out"} and set(diffs) == {"data"}
    assert outs["out"].shape == (5, 5) and diffs["data"].shape == images.shape
    accumulated = {k: [b.diff.copy() for b in v] for k, v in net.params.items()}
    net.clear_param_diffs()
    for begin in range(0, 5, 2):
        batch = np.zeros((2, *SHAPE[1:]), np.float32)
        seed_batch = np.zeros((2, 5), np.float32)
        part = images[begin : begin + 2]
        batch[: len(part)], seed_batch[: len(part)] = part, seeds[begin : begin + 2]
        out = net.forward(data=batch)["out"]
        np.testing.assert_allclose(outs["out"][begin : begin + 2], out[: len(part)], rtol=1e-6)
        grad = net.backward(out=seed_batch)["data"]
        np.testing.assert_allclose(diffs["data"][begin : begin + 2], grad[: len(part)], rtol=1e-6)
    for layer, blobs in net.params.items():  # parameter gradients add up over the batches
        for blob, total in zip(blobs, accumulated[layer], strict=True):
            np.testing.assert_allclose(blob.diff, total, rtol=1e-5, atol=1e-6)


def test_without_force_backward_no_diff_changes(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(_text(LAYERS, {"data": SHAPE}, force=False))
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=np.ones(SHAPE, np.float32))
    net.backward(out=np.ones((2, 5), np.float32))
    assert not net.blobs["conv1"].diff.any()
    assert not any(b.diff.any() for v in net.params.values() for b in v)


def test_parameters_without_a_gradient_rule_say_so(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(
        _text(
            {
                "conv1": 'type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 2 '
                "kernel_size: 1 }",
                "norm": 'type: "Normalize" bottom: "conv1" top: "norm"',
                "bn": 'type: "BatchNorm" bottom: "norm" top: "norm"',
            },
            {"data": (1, 2, 3, 3)},
        )
    )
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=np.ones((1, 2, 3, 3), np.float32))
    net.blobs["norm"].diff[...] = 1
    net.backward()
    assert net.blobs["data"].diff.any() and net.params["conv1"][0].diff.any()
    assert not any(b.diff.any() for b in net.params["bn"])  # Caffe computes none for BatchNorm's statistics
    with pytest.raises(caffe.PycaffeError, match="no parameter gradient rule for Normalize"):
        _ = net.params["norm"][0].diff


def test_embed_parameter_diff_and_untouched_indices(tmp_path: Path) -> None:
    layers = {
        "embed": 'type: "Embed" bottom: "data" top: "vectors" embed_param { num_output: 3 input_dim: 6 }',
        "fc": 'type: "InnerProduct" bottom: "vectors" top: "out" inner_product_param { num_output: 2 axis: 2 }',
    }
    text = _text(layers, {"data": (2, 4)})
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(text)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    weights = {k: [np.asarray(a, np.float64) for a in v] for k, v in caffemodel_arrays(caffemodel).items()}
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    indices = np.array([[0, 5, 2, 5], [1, 1, 3, 0]], np.float32)
    seed = np.random.default_rng(2).normal(0, 1, (2, 4, 2))
    net.forward(data=indices)
    net.blobs["data"].diff[...] = 7.0
    net.backward(out=seed.astype(np.float32))
    assert (net.blobs["data"].diff == 7.0).all()  # Caffe never writes a diff for Embed's indices

    def f(v):
        changed = {**weights, "embed": [v, *weights["embed"][1:]]}
        return _objective(text, changed, {"data": indices.astype(np.float64)}, seed)

    _check_numeric(net.params["embed"][0].diff, weights["embed"][0], f, count=8)


def test_backward_after_forward_from_a_set_blob_uses_that_blob(built) -> None:
    """net.blobs[b].data[...] = v; forward(start=) then backward(): the layers read v, as in Caffe's memory."""
    prototxt, net, weights, x, seed = built
    net.forward(data=x.astype(np.float32))
    injected = np.random.default_rng(8).normal(0, 1, net.blobs["biased"].shape)
    net.blobs["biased"].data[...] = injected
    net.forward(start="conv2")
    net.backward(out=seed.astype(np.float32))
    tail = _tail("conv2", {"biased": injected.shape})

    def f(v):
        changed = {**weights, "conv2": [v, weights["conv2"][1]]}
        return _objective(tail, changed, {"biased": injected}, seed)

    _check_numeric(net.params["conv2"][0].diff, weights["conv2"][0], f)
    # below the injected blob the values are those of the last full forward: the data diff is unchanged
    data_diff = net.blobs["data"].diff.copy()
    net.forward(data=x.astype(np.float32))
    net.backward(out=seed.astype(np.float32))
    np.testing.assert_allclose(net.blobs["data"].diff, data_diff, rtol=1e-5, atol=1e-7)


def test_force_backward_overrides_propagate_down_false(tmp_path: Path) -> None:
    """net.cpp ORs AllowForceBackward into every bottom's need for backward, so a prototxt's
    `propagate_down: false` is overridden when force_backward is set."""
    layers = dict(LAYERS)
    layers["conv2"] = layers["conv2"].replace('top: "conv2"', 'top: "conv2" propagate_down: false')
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(_text(layers, {"data": SHAPE}))
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    net.forward(data=np.ones(SHAPE, np.float32))
    net.backward(out=np.ones((2, 5), np.float32))
    assert net.blobs["biased"].diff.any() and net.blobs["data"].diff.any()


def test_a_blob_read_twice_by_one_layer_gives_each_split_top_its_diff(tmp_path: Path) -> None:
    layers = {
        "conv1": 'type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 2 '
        "kernel_size: 1 }",
        "square": 'type: "Eltwise" bottom: "conv1" bottom: "conv1" top: "out" eltwise_param { operation: PROD }',
    }
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(_text(layers, {"data": (1, 2, 3, 3)}))
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = np.random.default_rng(1).normal(0, 1, (1, 2, 3, 3)).astype(np.float32)
    net.forward(data=x)
    seed = np.random.default_rng(2).normal(0, 1, (1, 2, 3, 3)).astype(np.float32)
    net.backward(out=seed)
    conv1 = net.blobs["conv1"].data
    tops = [net.blobs[f"conv1_conv1_0_split_{k}"].diff for k in range(2)]
    for top in tops:  # Eltwise PROD: each bottom's diff is the top diff times the other bottom
        np.testing.assert_allclose(top, seed * conv1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["conv1"].diff, 2 * seed * conv1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: 3 }', (1.0, 3.0)),
        ('type: "Eltwise" eltwise_param { operation: SUM coeff: 3 coeff: 1 }', (3.0, 1.0)),
        ('type: "Eltwise" eltwise_param { operation: SUM coeff: 2 coeff: -1 }', (2.0, -1.0)),
    ],
)
def test_a_blob_read_twice_gives_each_split_top_its_own_bottom_diff(tmp_path: Path, layer, expected) -> None:
    """Caffe's EltwiseLayer::Backward writes coeff_i * top_diff into bottom i: the Split tops of a blob read
    twice by one layer get the coefficient of the bottom they feed, in order."""
    prototxt = tmp_path / "twice.prototxt"
    prototxt.write_text(
        'name: "t"\nforce_backward: true\ninput: "data" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "x" '
        "convolution_param { num_output: 2 kernel_size: 1 } }\n"
        f'layer {{ name: "e" {layer} bottom: "x" bottom: "x" top: "y" }}\n'
    )
    net = caffe.Net(str(prototxt), caffe.TEST)
    net.forward(data=np.random.default_rng(0).normal(size=(1, 2, 2, 2)).astype(np.float32))
    seed = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    net.backward(y=seed)
    np.testing.assert_array_equal(net.blobs["x_c_0_split_0"].diff, expected[0] * seed)
    np.testing.assert_array_equal(net.blobs["x_c_0_split_1"].diff, expected[1] * seed)
    np.testing.assert_array_equal(net.blobs["x"].diff, sum(expected) * seed)
