"""SSD layers (Normalize, Permute, PriorBox, DetectionOutput) against the numpy oracle
(tests/caffe_reference.py, written from weiliu89/brocolli-caffe's C++), and OpenCV 4 as a second opinion.

Real Caffe outputs (golden_v2 normalize, priorbox, permute_flatten_reshape, ssd_tiny_head and three real SSD
deploys) are checked in tests/convert/test_golden_v2.py; the oracle is checked against ssd_tiny_head below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcaffe.caffe.caffemodel import read_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import CamcaffeError
from tests import caffe_reference as cr
from tests.helpers import assert_close, blobs_of, convert_text, opencv_blobs, run_onnx, shared_path


def _layer(name: str, type_: str, bottoms: list[str], params: str = "", top: str | None = None) -> str:
    wiring = "".join(f'bottom: "{b}" ' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {wiring}top: "{top or name}" {params} }}\n'


def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def _oracle(text: str, weights: dict, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return cr.forward(text, weights, feeds)


def _weights_of(record) -> dict[str, list[np.ndarray]]:
    return {name: arrays for name, (_, arrays) in record.record.items()}


# ----------------------------------------------------------------------------- Normalize, Permute, PriorBox


@pytest.mark.parametrize(
    "params,shape",
    [
        ("", (2, 4, 5, 6)),
        ("across_spatial: false", (2, 4, 5, 6)),
        ("across_spatial: false channel_shared: false eps: 0.5", (2, 4, 5, 6)),
        ("channel_shared: false", (3, 5)),
        ("across_spatial: false channel_shared: false", (2, 3, 7)),
    ],
)
def test_normalize_matches_oracle(params, shape, tmp_path):
    text = _input("data", shape) + _layer("norm", "Normalize", ["data"], f"norm_param {{ {params} }}")
    result, weights, onnx_path = convert_text(tmp_path, text, seed=4)
    x = np.random.default_rng(1).normal(0, 2, shape).astype(np.float32)
    x.reshape(shape[0], shape[1], -1)[0, :, 0] = 0  # an all-zero pixel: the norm is sqrt(eps)
    ours = blobs_of(result, onnx_path, {"data": x})["norm"]
    assert_close(ours, _oracle(text, _weights_of(weights), {"data": x})["norm"], params)


@pytest.mark.parametrize("order", [[0, 2, 3, 1], [1, 0, 2, 3], [3], [0, 1, 2, 3], [2, 0]])
def test_permute_matches_oracle_and_keeps_symbolic_batch(order, tmp_path):
    orders = " ".join(f"order: {a}" for a in order)
    text = _input("data", (2, 3, 4, 5)) + _layer("perm", "Permute", ["data"], f"permute_param {{ {orders} }}")
    result, _, onnx_path = convert_text(tmp_path, text)
    for batch in (2, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 3, 4, 5)).astype(np.float32)
        ours = blobs_of(result, onnx_path, {"data": x})["perm"]
        np.testing.assert_array_equal(ours, cr.forward(text, {}, {"data": x})["perm"])


@pytest.mark.parametrize(
    "params",
    [
        "min_size: 10 max_size: 20 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 "
        "variance: 0.2 variance: 0.2",
        "min_size: 8 min_size: 16.9 max_size: 12 max_size: 24 aspect_ratio: 2 aspect_ratio: 3 flip: false "
        "step: 8 offset: 0.5",
        "min_size: 7.7 max_size: 15.5 aspect_ratio: 0.5 aspect_ratio: 2 img_h: 50 img_w: 70 step_h: 9 "
        "step_w: 11 offset: 0.25",
        "min_size: 12 aspect_ratio: 1 aspect_ratio: 2 aspect_ratio: 0.5 flip: true clip: false img_size: 64",
        "min_size: 30 aspect_ratio: 2",
    ],
)
def test_priorbox_matches_oracle_and_is_a_constant(params, tmp_path):
    text = (
        _input("feat", (1, 2, 5, 7))
        + _input("image", (1, 3, 40, 56))
        + _layer("pb", "PriorBox", ["feat", "image"], f"prior_box_param {{ {params} }}")
    )
    result, _, onnx_path = convert_text(tmp_path, text)
    feeds = {
        "feat": np.zeros((1, 2, 5, 7), np.float32),
        "image": np.zeros((1, 3, 40, 56), np.float32),
    }
    ours = blobs_of(result, onnx_path, feeds)["pb"]
    assert_close(ours, cr.forward(text, {}, feeds)["pb"], params, rel=1e-6)
    assert result.converted.tensor_shapes["pb"][0] == 1 and "pb" not in result.converted.batch_led


@pytest.mark.parametrize(
    "params,why",
    [
        ("min_size: 10 max_size: 5", "max_size"),
        ("min_size: 10 variance: 0.1 variance: 0.2", "variance"),
        ("min_size: 10 step: 4 step_h: 3 step_w: 3", "either step"),
        ("max_size: 10", "min_size"),
    ],
)
def test_priorbox_refuses_what_caffe_rejects(params, why, tmp_path):
    text = (
        _input("feat", (1, 2, 5, 7))
        + _input("image", (1, 3, 40, 56))
        + _layer("pb", "PriorBox", ["feat", "image"], f"prior_box_param {{ {params} }}")
    )
    with pytest.raises(CamcaffeError, match=why):
        convert_text(tmp_path, text)


# ------------------------------------------------------------------------------------- DetectionOutput


def _detection_net(num: int, priors: int, classes: int, share: bool, params: str) -> str:
    loc_classes = 1 if share else classes
    return (
        _input("loc", (num, priors * loc_classes * 4))
        + _input("conf", (num, priors * classes))
        + _input("prior", (1, 2, priors * 4))
        + _layer(
            "det",
            "DetectionOutput",
            ["loc", "conf", "prior"],
            f"detection_output_param {{ num_classes: {classes} share_location: {str(share).lower()} {params} }}",
        )
    )


def _detection_inputs(
    seed: int, num: int, priors: int, classes: int, share: bool, levels: int | None = None
) -> dict[str, np.ndarray]:
    """Overlapping priors (so NMS has work), small offsets, softmax scores; `levels` quantises the scores
    to make exact ties."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.3, 0.7, (priors, 2))
    sizes = rng.uniform(0.1, 0.4, (priors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], (priors, 1))
    prior = np.stack([boxes.reshape(-1), variances.reshape(-1)])[None].astype(np.float32)
    loc = rng.normal(0, 1, (num, priors * (1 if share else classes) * 4)).astype(np.float32)
    logits = rng.normal(0, 1.5, (num, priors, classes))
    scores = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    if levels:
        scores = np.round(scores * levels) / levels
    return {"loc": loc, "conf": scores.reshape(num, -1).astype(np.float32), "prior": prior}


def _run_detection(tmp_path: Path, text: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    result, _, onnx_path = convert_text(tmp_path, text)
    ours = run_onnx(onnx_path, feeds, [result.converted.blob_tensors["det"]])[
        result.converted.blob_tensors["det"]
    ]
    return ours, cr.forward(text, {}, feeds)["det"]


def _assert_same_rows(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: {ours.shape} vs {theirs.shape}"
    np.testing.assert_array_equal(ours[..., :2], theirs[..., :2], err_msg=f"{what}: image/label order")
    assert_close(ours, theirs, what, rel=1e-5)


DETECTION_CASES = {
    "center_size": (2, 40, 4, True, "nms_param { nms_threshold: 0.45 top_k: 20 } code_type: CENTER_SIZE "
                    "keep_top_k: 30 confidence_threshold: 0.2", None),
    "nothing_survives": (3, 40, 4, True, "nms_param { nms_threshold: 0.45 } code_type: CENTER_SIZE "
                         "confidence_threshold: 0.999", None),
    "keep_top_k_smaller": (2, 40, 4, True, "nms_param { nms_threshold: 0.6 top_k: 15 } code_type: CENTER_SIZE "
                           "keep_top_k: 7 confidence_threshold: 0.1", None),
    "ties_stable_order": (2, 30, 3, True, "nms_param { nms_threshold: 0.5 top_k: 6 } code_type: CORNER "
                          "keep_top_k: 5 confidence_threshold: 0.25", 4),
    "ties_std_sort_past_16": (
        2,
        90,
        4,
        True,
        "nms_param { nms_threshold: 0.95 } code_type: CENTER_SIZE keep_top_k: 40 confidence_threshold: 0.05",
        4,
    ),
    "ties_std_sort_many_levels": (
        1,
        120,
        5,
        True,
        "nms_param { nms_threshold: 0.6 } code_type: CORNER keep_top_k: 51 confidence_threshold: 0.05",
        20,
    ),
    "ties_without_keep_top_k": (2, 40, 4, True, "nms_param { nms_threshold: 0.7 } code_type: CENTER_SIZE "
                                "confidence_threshold: 0.1", 5),
    "adaptive_eta": (2, 40, 3, True, "nms_param { nms_threshold: 0.9 eta: 0.7 top_k: 30 } "
                     "code_type: CENTER_SIZE confidence_threshold: 0.05", None),
    "share_location_false": (2, 30, 4, False, "nms_param { nms_threshold: 0.4 top_k: 10 } code_type: CENTER_SIZE "
                             "keep_top_k: 12 confidence_threshold: 0.15 background_label_id: 2", None),
    "corner_size_encoded": (1, 40, 3, True, "nms_param { nms_threshold: 0.3 } code_type: CORNER_SIZE "
                            "variance_encoded_in_target: true confidence_threshold: 0.3", None),
    "no_threshold_no_top_k": (1, 25, 2, True, "nms_param { nms_threshold: 0.5 } code_type: CENTER_SIZE", None),
    "background_out_of_range": (2, 30, 3, True, "nms_param { nms_threshold: 0.0 top_k: 8 } code_type: CORNER "
                                "background_label_id: 7 confidence_threshold: 0.2", None),
    "threshold_is_strict": (
        1,
        30,
        3,
        True,
        "nms_param { nms_threshold: 0.95 } code_type: CORNER confidence_threshold: 0.25",
        4,
    ),
    "top_k_zero": (2, 20, 3, True, "nms_param { nms_threshold: 0.5 top_k: 0 }", None),
    "keep_top_k_zero_and_negative_top_k": (
        2, 20, 3, True, "nms_param { nms_threshold: 0.5 top_k: -4 } keep_top_k: 0", None
    ),
    "negative_keep_top_k": (2, 20, 3, True, "nms_param { nms_threshold: 0.5 top_k: 5 } keep_top_k: -3", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DETECTION_CASES))
def test_detection_output_matches_oracle(case, tmp_path):
    num, priors, classes, share, params, levels = DETECTION_CASES[case]
    text = _detection_net(num, priors, classes, share, params)
    feeds = _detection_inputs(7, num, priors, classes, share, levels)
    ours, theirs = _run_detection(tmp_path, text, feeds)
    _assert_same_rows(ours, theirs, case)
    if case == "nothing_survives":
        expected = np.full((1, 1, num, 7), -1, np.float32)
        expected[0, 0, :, 0] = np.arange(num)
        np.testing.assert_array_equal(ours, expected)
    if case == "keep_top_k_smaller":
        assert ours.shape[2] == num * 7
    if case == "threshold_is_strict":
        assert 0.25 in feeds["conf"] and 0.25 not in ours[0, 0, :, 2]
    if case.startswith("ties"):
        assert len(np.unique(ours[0, 0, :, 2])) < ours.shape[2], "the case should hold tied scores"


def test_detection_output_batch_with_an_empty_image_and_symbolic_batch(tmp_path):
    """An image without detections adds no rows while the others keep theirs; the same model runs any
    batch size."""
    text = _detection_net(3, 30, 3, True, "nms_param { nms_threshold: 0.45 top_k: 10 } "
                          "code_type: CENTER_SIZE keep_top_k: 8 confidence_threshold: 0.5")  # fmt: skip
    feeds = _detection_inputs(11, 3, 30, 3, True)
    feeds["conf"].reshape(3, 30, 3)[1] = [0.9, 0.05, 0.05]  # image 1: background everywhere
    result, _, onnx_path = convert_text(tmp_path, text)
    name = result.converted.blob_tensors["det"]
    ours = run_onnx(onnx_path, feeds, [name])[name]
    theirs = cr.forward(text, {}, feeds)["det"]
    _assert_same_rows(ours, theirs, "batch")
    assert 1 not in ours[0, 0, :, 0] and {0, 2} <= set(ours[0, 0, :, 0])
    for batch in (1, 5):
        more = _detection_inputs(batch, batch, 30, 3, True)
        more["prior"] = feeds["prior"]
        name_out = run_onnx(onnx_path, more, [name])[name]
        _assert_same_rows(name_out, cr.forward(text, {}, more)["det"], f"batch {batch}")


@pytest.mark.parametrize(
    "params,why",
    [
        ("code_type: CENTER_SIZE", "no nms_param"),
        ("nms_param { nms_threshold: 0.4 eta: 1.5 }", "eta"),
        ("nms_param { nms_threshold: -0.1 }", "negative"),
        ("nms_param { nms_threshold: 0.4 } background_label_id: -1", "background_label_id -1"),
        ("nms_param { nms_threshold: 0.4 } clip: true", "clip"),
        ("nms_param { nms_threshold: 0.4 } normalized_bbox: false", "normalized_bbox"),
    ],
)
def test_detection_output_refuses_by_name(params, why, tmp_path):
    with pytest.raises(CamcaffeError, match=why):
        convert_text(tmp_path, _detection_net(1, 10, 3, True, params))


def test_detection_output_ignores_save_output_param(tmp_path):
    """Only file writing depends on it (SSD300's deploy names a label map and a name-size file)."""
    save = (
        'save_output_param { output_directory: "/nonexistent/out" output_format: "VOC" '
        'label_map_file: "missing_labelmap.prototxt" name_size_file: "missing.txt" num_test_image: 10 }'
    )
    base = "nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE confidence_threshold: 0.2"
    feeds = _detection_inputs(3, 2, 20, 3, True)
    plain, _ = _run_detection(tmp_path / "a", _detection_net(2, 20, 3, True, base), feeds)
    saved, _ = _run_detection(tmp_path / "b", _detection_net(2, 20, 3, True, f"{base} {save}"), feeds)
    np.testing.assert_array_equal(plain, saved)
    assert not Path("/nonexistent/out").exists()


def test_oracle_matches_real_caffe_on_ssd_tiny_head():
    """The oracle's SSD layers equal brocolli-caffe's stored blobs (so the tests above check Caffe)."""
    folder = shared_path("golden_v2", "ssd_tiny_head")
    weights = {
        name: [blob.values.reshape(blob.shape) for blob in layer.blobs]
        for name, layer in read_caffemodel(folder / "weights.caffemodel").layers.items()
    }
    blobs = cr.forward(
        (folder / "deploy.prototxt").read_text(), weights, {"data": np.load(folder / "input.npy")}
    )
    reference = np.load(folder / "blobs.npz")
    checked = [blob for blob in reference.files if blob in blobs]
    for blob in checked:
        assert_close(np.asarray(blobs[blob], np.float32), reference[blob], blob, rel=1e-5)
    assert sum(blob.startswith("det_") for blob in checked) == 8 and len(checked) > 30


# --------------------------------------------------------------------------------- OpenCV second opinion


def _synthetic_ssd_head() -> str:
    """Two feature maps -> Normalize / loc / conf / PriorBox -> Permute+Flatten -> Concat -> conf
    Reshape-Softmax-Flatten -> DetectionOutput, as weiliu89's model_libs writes SSD heads."""

    def conv(name: str, bottom: str, out: int, extra: str = "") -> str:
        return _layer(
            name,
            "Convolution",
            [bottom],
            f"convolution_param {{ num_output: {out} kernel_size: 3 pad: 1 {extra}}}",
        )

    text = 'name: "ssd_head"\n' + _input("data", (1, 3, 32, 32))
    text += conv("conv1", "data", 8, "stride: 4") + _layer("relu1", "ReLU", ["conv1"], top="conv1")
    text += conv("conv2", "conv1", 8, "stride: 2") + _layer("relu2", "ReLU", ["conv2"], top="conv2")
    text += _layer(
        "conv1_norm", "Normalize", ["conv1"], "norm_param { across_spatial: false channel_shared: false }"
    )
    heads = [("conv1_norm", 4, "min_size: 8 max_size: 16 aspect_ratio: 2 flip: true clip: false step: 4"),
             ("conv2", 6, "min_size: 16 max_size: 24 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: false")]  # fmt: skip
    locs, confs, priors = [], [], []
    for feat, count, prior_params in heads:
        for kind, per in (("loc", 4), ("conf", 3)):
            name = f"{feat}_mbox_{kind}"
            text += conv(name, feat, count * per)
            text += _layer(
                f"{name}_perm", "Permute", [name], "permute_param { order: 0 order: 2 order: 3 order: 1 }"
            )
            text += _layer(f"{name}_flat", "Flatten", [f"{name}_perm"], "flatten_param { axis: 1 }")
            (locs if kind == "loc" else confs).append(f"{name}_flat")
        variance = "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2"
        text += _layer(
            f"{feat}_mbox_priorbox",
            "PriorBox",
            [feat, "data"],
            f"prior_box_param {{ {prior_params} {variance} }}",
        )
        priors.append(f"{feat}_mbox_priorbox")
    text += _layer("mbox_loc", "Concat", locs, "concat_param { axis: 1 }")
    text += _layer("mbox_conf", "Concat", confs, "concat_param { axis: 1 }")
    text += _layer("mbox_priorbox", "Concat", priors, "concat_param { axis: 2 }")
    text += _layer(
        "mbox_conf_reshape", "Reshape", ["mbox_conf"], "reshape_param { shape { dim: 0 dim: -1 dim: 3 } }"
    )
    text += _layer("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], "softmax_param { axis: 2 }")
    text += _layer("mbox_conf_flatten", "Flatten", ["mbox_conf_softmax"], "flatten_param { axis: 1 }")
    text += _layer(
        "detection_out",
        "DetectionOutput",
        ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
        "detection_output_param { num_classes: 3 share_location: true background_label_id: 0 "
        "nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 50 "
        "confidence_threshold: 0.3 }",
    )
    return text


def test_synthetic_ssd_head_matches_oracle_and_opencv(tmp_path):
    pytest.importorskip("cv2")
    prototxt = tmp_path / "ssd.prototxt"
    prototxt.write_text(_synthetic_ssd_head())
    caffemodel = tmp_path / "ssd.caffemodel"
    weights = write_random_caffemodel(prototxt, caffemodel, seed=5)
    result = convert_files(prototxt, caffemodel, tmp_path / "m.onnx", ConvertOptions(expose_all=True))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    ours = blobs_of(result, tmp_path / "m.onnx", {"data": x})
    oracle = cr.forward(prototxt.read_text(), _weights_of(weights), {"data": x})
    for blob in (
        "conv1_norm",
        "conv1_norm_mbox_loc_perm",
        "mbox_priorbox",
        "mbox_conf_flatten",
        "detection_out",
    ):
        assert_close(ours[blob], np.asarray(oracle[blob], np.float32), blob, rel=1e-5)
    assert ours["detection_out"].shape[2] > 3, "the head should detect something"
    names = ["conv1_norm", "conv1_norm_mbox_loc_perm", "mbox_priorbox", "detection_out"]
    theirs = dict(zip(names, opencv_blobs(prototxt, caffemodel, x, names), strict=True))
    for blob in names[:3]:
        assert_close(ours[blob], theirs[blob].reshape(ours[blob].shape), f"opencv {blob}", rel=1e-4)
    # OpenCV 4 keeps the same detections but, once keep_top_k cuts, emits them in descending score over
    # all classes; Caffe regroups them by label (std::map), each label's rows by descending score.
    assert ours["detection_out"].shape[2] > 50 - 1, "keep_top_k should cut here"
    assert_close(
        _by_label(ours["detection_out"]), _by_label(theirs["detection_out"]), "opencv rows", rel=1e-4
    )


def _by_label(rows: np.ndarray) -> np.ndarray:
    flat = rows.reshape(-1, 7)
    return flat[np.lexsort((-flat[:, 2], flat[:, 1], flat[:, 0]))]


def test_oracle_sorts_ties_as_libstdcxx():
    """keep_top_k uses std::sort: the oracle's emulation gives g++'s orders (recorded from a g++ 12 build),
    introsort and its heapsort fallback (std::partial_sort) alike; up to 16 elements it is stable."""
    scores = [0.5, 0.25, 0.5, 0.75, 0.5, 0.25, 0.25, 0.5, 0.75, 0.5, 0.5, 0.25]
    scores += [0.75, 0.5, 0.25, 0.5, 0.5, 0.75, 0.25, 0.5, 0.5, 0.25, 0.75, 0.5]
    items = [(np.float32(s), i) for i, s in enumerate(scores)]

    def greater(a: tuple, b: tuple) -> bool:
        return bool(a[0] > b[0])

    introsort = [22, 3, 17, 8, 12, 23, 0, 20, 19, 16, 15, 13, 10, 9, 7, 4, 2, 11, 14, 6, 18, 5, 21, 1]
    heapsort = [8, 3, 12, 22, 17, 7, 16, 20, 9, 10, 23, 15, 19, 13, 4, 0, 2, 18, 1, 21, 5, 11, 6, 14]
    assert [i for _, i in cr._libstdcxx_sort(items, greater)] == introsort
    assert [i for _, i in cr._libstdcxx_sort(items, greater, depth=0)] == heapsort
    assert [i for _, i in cr._libstdcxx_sort(items[:16], greater)] == sorted(
        range(16), key=lambda i: -scores[i]
    )


def test_detection_output_overflowing_boxes_follow_cpp_nan_rules(tmp_path):
    """Huge offsets overflow exp() to inf, so boxes and overlaps hold inf and NaN: NMS must then compare as
    Caffe's C++ does (std::min/std::max keep their first argument against NaN, a NaN overlap suppresses)."""
    params = (
        "nms_param { nms_threshold: 0.45 } code_type: CENTER_SIZE keep_top_k: 30 confidence_threshold: 0.1"
    )
    text = _detection_net(2, 40, 3, True, params)
    feeds = _detection_inputs(5, 2, 40, 3, True)
    feeds["loc"] = feeds["loc"] * np.float32(1e3)
    with np.errstate(invalid="ignore", over="ignore"):
        ours, theirs = _run_detection(tmp_path, text, feeds)
    assert ours.shape == theirs.shape
    assert np.isinf(theirs).any(), "the case should overflow (inf boxes, NaN overlaps)"
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, equal_nan=True)
