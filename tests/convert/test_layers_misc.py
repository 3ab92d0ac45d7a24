"""Simple fork layers (camcaffe/convert/layers_misc.py and the fork activations of layers_activation.py):
ReLU6, HardSwish, HardSigmoid, Clip, Swish, Mish, Reduction, Tile, Silence, MVN, Embed, Parameter,
BatchReindex, Filter. Checked against real Caffe (../shared/golden_v2), the numpy oracle
(tests/caffe_reference.py, itself checked against golden_v2 here) and OpenCV 4 where it has the type."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from camcaffe.caffe.caffemodel import read_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.verify import opencv_available
from camcaffe.errors import UnsupportedLayerError
from tests import caffe_reference as cr
from tests.convert.test_fuzz_layers import Refused, check_net
from tests.helpers import assert_close, blobs_of, convert_text, opencv_blobs, run_onnx, shared_path

GOLDEN_FOLDERS = [
    "act_relu6_hardswish_hardsigmoid",
    "reduction_tile_silence",
    "mvn",
    "embed_parameter_batchreindex",
]


def _layer(name: str, type_: str, bottoms: list[str], tops: list[str] | None = None, params: str = "") -> str:
    tops = [name] if tops is None else tops
    wiring = "".join(f'bottom: "{b}" ' for b in bottoms) + "".join(f'top: "{t}" ' for t in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {wiring}{params} }}\n'


def _net(layers: str, shape: tuple[int, ...] = (2, 3, 5, 6)) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'name: "misc"\ninput: "data"\ninput_shape {{ {dims} }}\n{layers}'


def _on_data(
    type_: str, params: str = "", shape: tuple[int, ...] = (2, 3, 5, 6), in_place: bool = False
) -> str:
    if in_place:  # on a copy, so that the input itself stays as fed
        copy = _layer("copy", "Power", ["data"], ["x"])
        return _net(copy + _layer("l", type_, ["x"], ["x"], params), shape)
    return _net(_layer("l", type_, ["data"], None, params), shape)


# ------------------------------------------------------------------------------------------- real Caffe


def _golden_inputs(folder: Path) -> dict[str, np.ndarray]:
    if (folder / "inputs.npz").exists():
        data = np.load(folder / "inputs.npz")
        return {key: data[key] for key in data.files}
    index = json.loads((folder / "blobs_index.json").read_text())
    return {index["input_blobs"][0]: np.load(folder / "input.npy")}


def _golden_weights(folder: Path) -> dict[str, list[np.ndarray]]:
    if not (folder / "weights.caffemodel").exists():
        return {}
    model = read_caffemodel(folder / "weights.caffemodel")
    return {name: [b.values.reshape(b.shape) for b in layer.blobs] for name, layer in model.layers.items()}


@pytest.mark.parametrize("name", GOLDEN_FOLDERS)
def test_reference_matches_real_caffe(name):
    """The oracle the fuzz uses agrees with real Caffe on every stored blob."""
    folder = shared_path("golden_v2", name)
    ours = cr.forward(
        (folder / "deploy.prototxt").read_text(), _golden_weights(folder), _golden_inputs(folder)
    )
    golden = np.load(folder / "blobs.npz")
    compared = 0
    for blob in golden.files:
        if blob in ours:
            assert_close(ours[blob], golden[blob], f"{name}:{blob}", rel=2e-5)
            compared += 1
    assert compared >= 5


def _filter_only(tmp_path: Path) -> tuple[Path, Path]:
    """spp_im2col_filter without its SPP and Im2col layers (another family's types)."""
    folder = shared_path("golden_v2", "spp_im2col_filter")
    kept = [
        line
        for line in (folder / "deploy.prototxt").read_text().splitlines()
        if not re.search(r'type: "(SPP|Im2col)"', line)
    ]
    prototxt = tmp_path / "filter.prototxt"
    prototxt.write_text("\n".join(kept) + "\n")
    return folder, prototxt


def test_filter_matches_real_caffe(tmp_path):
    folder, prototxt = _filter_only(tmp_path)
    result = convert_files(prototxt, None, tmp_path / "m.onnx", ConvertOptions(expose_all=True))
    inputs = _golden_inputs(folder)
    blobs = blobs_of(result, tmp_path / "m.onnx", inputs)
    golden = np.load(folder / "blobs.npz")
    assert golden["filtered"].shape == (2, 2, 7, 9)
    assert_close(blobs["filtered"], golden["filtered"], "filtered", rel=0)
    ours = cr.forward(prototxt.read_text(), {}, inputs)
    assert_close(ours["filtered"], golden["filtered"], "reference filtered", rel=0)


def test_filter_keeps_a_data_dependent_count(tmp_path):
    folder, prototxt = _filter_only(tmp_path)
    convert_files(prototxt, None, tmp_path / "m.onnx", ConvertOptions(expose_all=True))
    x = _golden_inputs(folder)["data"]
    for selector in ([0, 0, 0], [1, 1, 1], [0, -2.5, 0], [np.nan, 0, 1]):
        sel = np.asarray(selector, np.float32)
        out = run_onnx(tmp_path / "m.onnx", {"data": x, "sel": sel}, ["filtered"])["filtered"]
        np.testing.assert_array_equal(out, x[sel != 0])  # NaN is true in C++, as in numpy


# ------------------------------------------------------------------------------------------- the oracle


CASES = [
    ("ReLU6", _on_data("ReLU6")),
    ("ReLU6-slope-threshold", _on_data("ReLU6", "relu6_param { negative_slope: 0.2 threshold: 1.5 }")),
    ("ReLU6-negative-threshold", _on_data("ReLU6", "relu6_param { threshold: -0.5 }")),
    ("ReLU6-in-place", _on_data("ReLU6", "relu6_param { threshold: 0.7 }", in_place=True)),
    ("HardSwish", _on_data("HardSwish")),
    ("HardSwish-in-place-2d", _on_data("HardSwish", shape=(3, 7), in_place=True)),
    ("HardSigmoid", _on_data("HardSigmoid")),
    ("HardSigmoid-params", _on_data("HardSigmoid", "hardsigmoid_param { alpha: 0.7 beta: -0.1 }")),
    ("Clip", _on_data("Clip", "clip_param { min: -0.5 max: 1.25 }")),
    ("Clip-min-above-max", _on_data("Clip", "clip_param { min: 0.5 max: -0.25 }")),
    ("Clip-in-place", _on_data("Clip", "clip_param { min: 0 max: 0.5 }", in_place=True)),
    ("Swish", _on_data("Swish")),
    ("Swish-beta", _on_data("Swish", "swish_param { beta: 1.7 }", in_place=True)),
    ("Mish", _on_data("Mish", shape=(2, 4))),
    ("Reduction-all", _on_data("Reduction")),
    ("Reduction-asum-axis1", _on_data("Reduction", "reduction_param { operation: ASUM axis: 1 }")),
    (
        "Reduction-sumsq-axis2",
        _on_data("Reduction", "reduction_param { operation: SUMSQ axis: 2 coeff: -0.5 }"),
    ),
    ("Reduction-mean-last", _on_data("Reduction", "reduction_param { operation: MEAN axis: -1 coeff: 3 }")),
    ("Reduction-mean-2d", _on_data("Reduction", "reduction_param { operation: MEAN axis: 1 }", (3, 7))),
    (
        "Reduction-then-relu",
        _net(
            _layer("r", "Reduction", ["data"], None, "reduction_param { axis: 2 }")
            + _layer("a", "ReLU", ["r"], ["r"])
        ),
    ),
    ("Tile", _on_data("Tile", "tile_param { tiles: 3 }")),
    ("Tile-axis0", _on_data("Tile", "tile_param { axis: 0 tiles: 2 }")),
    ("Tile-negative-axis", _on_data("Tile", "tile_param { axis: -1 tiles: 2 }", (2, 3, 4))),
    ("Silence", _net(_layer("r", "ReLU", ["data"]) + _layer("s", "Silence", ["data", "r"], []))),
    ("MVN", _on_data("MVN")),
    (
        "MVN-mean-only-across",
        _on_data("MVN", "mvn_param { normalize_variance: false across_channels: true }"),
    ),
    ("MVN-eps", _on_data("MVN", "mvn_param { eps: 0.3 across_channels: true }")),
    ("MVN-in-place", _on_data("MVN", "mvn_param { eps: 0.01 }", in_place=True)),
    ("MVN-3d", _on_data("MVN", "mvn_param { across_channels: true }", (2, 3, 5))),
    ("MVN-2d-gives-4d", _on_data("MVN", "", (3, 4))),
]


@pytest.mark.parametrize("text", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_layer_matches_reference(tmp_path, text):
    try:
        comparison = check_net(tmp_path, text, seed=5)
    except Refused as exc:
        pytest.fail(f"camcaffe refused a valid Caffe net: {exc}\n{text}")
    assert comparison.ok, "\n".join(comparison.problems) + f"\n{text}"


EMBED_NET = (
    'name: "embed"\ninput: "ids"\ninput_shape { dim: 3 dim: 2 dim: 2 }\n'
    + _layer("e", "Embed", ["ids"], None, "embed_param { num_output: 4 input_dim: 5 }")
    + _layer("n", "Embed", ["ids"], None, "embed_param { num_output: 2 input_dim: 5 bias_term: false }")
)


def test_embed_truncates_float_indices(tmp_path):
    ids = np.array([[[0, 4], [2.9, 1.2]], [[3, 3], [0.5, 4.999]], [[-0.7, 1], [2, 2]]], np.float32)
    comparison = check_net(tmp_path, EMBED_NET, seed=1, inputs={"ids": ids})
    assert comparison.ok, comparison.problems


@pytest.mark.parametrize("bad", [5.0, 7.5, -1.0, -3.0])
def test_embed_index_out_of_range_fails_at_run_time(tmp_path, bad):
    """Caffe only DCHECKs the range (a release build reads outside W); ONNX Runtime must fail rather than
    wrap a negative index around."""
    result, _, onnx_path = convert_text(tmp_path, EMBED_NET)
    ids = np.zeros((3, 2, 2), np.float32)
    ids[1, 0, 1] = bad
    with pytest.raises(Exception, match="(?i)out of (data )?bounds|invalid|indices"):
        run_onnx(onnx_path, {"ids": ids}, ["e"])


PARAMETER_REINDEX_NET = (
    'name: "pr"\ninput: "x"\ninput_shape { dim: 3 dim: 2 dim: 4 }\ninput: "perm"\ninput_shape { dim: 5 }\n'
    + _layer("p", "Parameter", [], None, "parameter_param { shape { dim: 2 dim: 1 dim: 3 } }")
    + _layer("r", "BatchReindex", ["x", "perm"])
    + _layer("t", "TanH", ["r"], ["r"])
)


def test_parameter_and_batch_reindex(tmp_path):
    weights = {"p": [np.arange(6, dtype=np.float32).reshape(2, 1, 3) - 2.5]}
    inputs = {"x": np.random.default_rng(2).standard_normal((3, 2, 4)).astype(np.float32)}
    inputs["perm"] = np.array([2, 0, 0, 1.9, 2.5], np.float32)
    comparison = check_net(tmp_path, PARAMETER_REINDEX_NET, seed=1, inputs=inputs, weights=weights)
    assert comparison.ok, comparison.problems


@pytest.mark.parametrize("bad", [-0.5, -1.0, 3.0])
def test_batch_reindex_out_of_range_fails_at_run_time(tmp_path, bad):
    """Caffe CHECKs 0 <= perm < batch on the float (-0.5 aborts although it truncates to 0)."""
    result, _, onnx_path = convert_text(tmp_path, PARAMETER_REINDEX_NET)
    x = np.ones((3, 2, 4), np.float32)
    perm = np.array([0, 1, bad, 2, 0], np.float32)
    with pytest.raises(Exception, match="(?i)out of (data )?bounds|invalid|indices"):
        run_onnx(onnx_path, {"x": x, "perm": perm}, ["r"])


def test_filter_several_bottoms(tmp_path):
    text = (
        'name: "f"\ninput: "a"\ninput_shape { dim: 4 dim: 3 }\ninput: "b"\ninput_shape { dim: 4 dim: 2 dim: 2 }\n'
        'input: "s"\ninput_shape { dim: 4 dim: 1 }\n'
        + _layer("f", "Filter", ["a", "b", "s"], ["fa", "fb"])
        + _layer("r", "ReLU", ["fb"], ["fb"])
    )
    rng = np.random.default_rng(4)
    inputs = {
        "a": rng.standard_normal((4, 3)),
        "b": rng.standard_normal((4, 2, 2)),
        "s": np.array([[0], [2], [0], [1]]),
    }
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    comparison = check_net(tmp_path, text, seed=1, inputs=inputs)
    assert comparison.ok, comparison.problems


def test_symbolic_batch_follows_the_input(tmp_path):
    """Converted with the deploy batch 2, run with batch 3: Tile/Reduction over the batch still follow."""
    text = _net(
        _layer("t", "Tile", ["data"], None, "tile_param { axis: 0 tiles: 2 }")
        + _layer("r", "Reduction", ["t"], None, "reduction_param { operation: MEAN axis: 1 }")
        + _layer("m", "MVN", ["data"], None, "mvn_param { across_channels: true }")
    )
    result, _, onnx_path = convert_text(tmp_path, text)
    x = np.random.default_rng(3).standard_normal((3, 3, 5, 6)).astype(np.float32)
    blobs = blobs_of(result, onnx_path, {"data": x})
    reference = cr.forward(text, {}, {"data": x})
    assert blobs["r"].shape == (6,)
    for blob in ("t", "r", "m"):
        assert_close(blobs[blob], reference[blob], blob)


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "layer,reason",
    [
        (_layer("l", "Tile", ["data"], None, "tile_param { axis: 1 }"), "tiles is not set"),
        (_layer("l", "Tile", ["data"], None, "tile_param { tiles: 0 }"), "must be positive"),
        (_layer("l", "Clip", ["data"], None, "clip_param { min: 0 }"), "clip_param.max not set"),
        (_layer("l", "Reduction", ["data"], None, "reduction_param { axis: 4 }"), "out of range"),
        (_layer("l", "Embed", ["data"], None, "embed_param { input_dim: 3 }"), "num_output must be positive"),
        (_layer("l", "Filter", ["data", "data"], ["a"]), "singleton axes"),
        (_layer("l", "BatchReindex", ["data", "data"]), "must be 1-D"),
        (
            _layer(
                "r",
                "Reshape",
                ["data"],
                None,
                "reshape_param { shape { dim: 2 dim: 3 dim: 5 dim: 3 dim: 2 } }",
            )
            + _layer("l", "MVN", ["r"]),
            "at most|1 to 4 axes",
        ),
        (_layer("l", "Tile", ["data"], ["data"], "tile_param { tiles: 2 }"), "in-place"),
    ],
)
def test_refusals_name_the_layer_and_reason(tmp_path, layer, reason):
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(_net(layer))
    with pytest.raises(UnsupportedLayerError, match=f"layer 'l'.*({reason})"):
        convert_files(prototxt, None, tmp_path / "m.onnx")


def test_filter_top_count_is_checked(tmp_path):
    text = 'name: "f"\ninput: "a"\ninput_shape { dim: 4 dim: 3 }\ninput: "s"\ninput_shape { dim: 4 }\n'
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(text + _layer("l", "Filter", ["a", "s"], ["x", "y"]))
    with pytest.raises(UnsupportedLayerError, match="layer 'l'.*one top per bottom"):
        convert_files(prototxt, None, tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------- OpenCV


OPENCV_CASES = [
    ("ReLU6", ""),  # OpenCV ignores relu6_param: only the default min(max(x, 0), 6) is compared
    ("HardSwish", ""),
    ("HardSigmoid", ""),
    ("Swish", ""),  # OpenCV ignores swish_param.beta: only beta 1 is compared
    ("Mish", ""),
    ("MVN", ""),
    ("MVN", "mvn_param { normalize_variance: false }"),
    ("MVN", "mvn_param { across_channels: true }"),
]


@pytest.mark.skipif(not opencv_available(), reason="cv2 without dnn.readNetFromCaffe (OpenCV 5?)")
@pytest.mark.parametrize("type_,params", OPENCV_CASES)
def test_matches_opencv(tmp_path, type_, params):
    text = _on_data(type_, params)
    result, _, onnx_path = convert_text(tmp_path, text)
    x = np.random.default_rng(6).uniform(-9, 9, (2, 3, 5, 6)).astype(np.float32)
    ours = blobs_of(result, onnx_path, {"data": x})["l"]
    (theirs,) = opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel", x, ["l"])
    assert_close(ours, theirs.reshape(ours.shape), f"{type_} {params}")


@pytest.mark.skipif(not opencv_available(), reason="cv2 without dnn.readNetFromCaffe (OpenCV 5?)")
def test_opencv_mvn_differs_on_eps(tmp_path):
    """OpenCV divides by sqrt(var + eps); Caffe's mvn_layer.cpp (and golden_v2) by sqrt(var) + eps."""
    text = _on_data("MVN", "mvn_param { across_channels: true eps: 0.5 }")
    result, _, onnx_path = convert_text(tmp_path, text)
    x = np.random.default_rng(6).uniform(-9, 9, (2, 3, 5, 6)).astype(np.float32)
    ours = blobs_of(result, onnx_path, {"data": x})["l"]
    (theirs,) = opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel", x, ["l"])
    centred = x.astype(np.float64) - x.mean(axis=(1, 2, 3), keepdims=True)
    variance = (centred**2).mean(axis=(1, 2, 3), keepdims=True)
    assert_close(ours, centred / (np.sqrt(variance) + 0.5), "camcaffe")
    assert_close(theirs.reshape(ours.shape), centred / np.sqrt(variance + 0.5), "OpenCV")
