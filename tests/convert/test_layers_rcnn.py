"""Faster R-CNN / R-FCN layers (camcaffe/convert/layers_rcnn.py) against real Caffe (golden_v2 proposal),
the numpy oracle in tests/caffe_reference.py (written from the forks' C++ / Python) and OpenCV 4.

Proposal outputs have data-dependent row counts: shapes must agree, then every row in order."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from camcaffe.caffe import caffe_pb2
from camcaffe.convert.layers_rcnn import parse_param_str
from camcaffe.errors import UnsupportedLayerError
from tests import caffe_reference as ref
from tests.convert.test_golden_v2 import check_golden_v2
from tests.helpers import assert_close, blobs_of, convert_text, shared_path


def _layer(text: str) -> caffe_pb2.LayerParameter:
    return ref.parse_net(f"layer {{ {text} }}").layer[0]


def _inputs(**shapes: tuple[int, ...]) -> str:
    return "\n".join(
        f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in s)} }} }} }}'
        for n, s in shapes.items()
    )


def _run(tmp_path: Path, text: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    result, _, onnx_path = convert_text(tmp_path, text)
    return blobs_of(result, onnx_path, feeds)


ROIS = np.array(
    [
        [0, 0, 0, 40, 30],
        [1, 5.5, 6, 20.5, 13.9],  # halves: C round goes away from zero
        [1, -10, -10, 3, 3],  # starts outside the map
        [0, 30, 20, 28, 18],  # inverted: forced to one cell
        [1, 2, 2, 2, 2],  # a point
        [0, 42, 34, 60, 50],  # entirely outside: every bin empty -> 0
        [1, 1.5, 2.5, 33.5, 22.5],
        [0, 9.9, 10.1, 10.1, 30.0],
    ],
    np.float32,
)


@pytest.mark.parametrize(
    ("pooled", "scale"), [((3, 2), 0.25), ((2, 2), 0.0625), ((4, 5), 0.5), ((1, 1), 1.0)]
)
def test_roi_pooling_matches_the_fast_rcnn_forward(tmp_path, pooled, scale):
    x = np.random.default_rng(1).normal(size=(2, 6, 9, 11)).astype(np.float32)
    param = f"roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} spatial_scale: {scale} }}"
    text = _inputs(data=(2, 6, 9, 11), rois=(len(ROIS), 5)) + (
        f'\nlayer {{ name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pooled" {param} }}'
    )
    blobs = _run(tmp_path, text, {"data": x, "rois": ROIS})
    layer = _layer(f'name: "roi" type: "ROIPooling" {param}')
    assert_close(blobs["pooled"], ref.roi_pooling(x, ROIS, layer), "ROIPooling")


@pytest.mark.parametrize(("dim", "group", "scale"), [(2, 3, 0.25), (1, 2, 0.0625), (3, 1, 0.5)])
def test_psroi_pooling_matches_the_rfcn_forward(tmp_path, dim, group, scale):
    channels = dim * group * group
    x = np.random.default_rng(2).normal(size=(2, channels, 9, 11)).astype(np.float32)
    param = f"psroi_pooling_param {{ spatial_scale: {scale} output_dim: {dim} group_size: {group} }}"
    text = _inputs(data=(2, channels, 9, 11), rois=(len(ROIS), 5)) + (
        f'\nlayer {{ name: "ps" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps" {param} }}'
    )
    blobs = _run(tmp_path, text, {"data": x, "rois": ROIS})
    layer = _layer(f'name: "ps" type: "PSROIPooling" {param}')
    assert_close(blobs["ps"], ref.psroi_pooling(x, ROIS, layer), "PSROIPooling")


def test_roi_layers_agree_with_opencv(tmp_path):
    """OpenCV 4 implements both (batch 1): same values on these regions, halves and empty bins included."""
    cv2 = pytest.importorskip("cv2")
    x = np.random.default_rng(3).normal(size=(1, 18, 9, 11)).astype(np.float32)
    rois = ROIS.copy()
    rois[:, 0] = 0
    text = (
        'input: "data" input_shape { dim: 1 dim: 18 dim: 9 dim: 11 }\n'
        f'input: "rois" input_shape {{ dim: {len(rois)} dim: 5 }}\n'
        'layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pooled" '
        "roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 } }\n"
        'layer { name: "ps" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps" '
        "psroi_pooling_param { spatial_scale: 0.25 output_dim: 2 group_size: 3 } }\n"
    )
    blobs = _run(tmp_path, text, {"data": x, "rois": rois})
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"))
    net.setInput(x, "data")
    net.setInput(rois, "rois")
    pooled, ps = net.forward(["roi", "ps"])
    assert_close(blobs["pooled"], pooled, "OpenCV ROIPooling")
    assert_close(blobs["ps"], ps, "OpenCV PSROIPooling")


def test_golden_v2_proposal_and_the_oracle(tmp_path):
    """Real Caffe's rows (9 of them tied at score 0, in its quicksort's order) and the oracle agree."""
    folder = shared_path("golden_v2", "proposal")
    assert check_golden_v2("proposal", tmp_path) == 5
    inputs, reference = np.load(folder / "inputs.npz"), np.load(folder / "blobs.npz")
    net = ref.parse_net((folder / "deploy.prototxt").read_text())
    layer = next(layer for layer in net.layer if layer.type == "Proposal")
    rois, scores = ref.caffe_proposal(
        [inputs[k] for k in ("rpn_cls_prob", "rpn_bbox_pred", "im_info")], layer
    )
    assert_close(rois, reference["rois_out"], "oracle rois")
    assert_close(scores, reference["scores_out"], "oracle scores")


def _rpn_inputs(seed: int, batch: int, anchors: int, height: int, width: int, levels: int | None):
    rng = np.random.default_rng(seed)
    foreground = 1 / (1 + np.exp(-rng.normal(0, 2, (batch, anchors, height, width))))
    if levels:  # quantised scores: many exact ties for the quicksort to order
        foreground = np.round(foreground * levels) / levels
    cls = np.concatenate([1 - foreground, foreground], axis=1).astype(np.float32)
    deltas = rng.normal(0, 0.3, (batch, 4 * anchors, height, width)).astype(np.float32)
    return cls, deltas


PROPOSAL_CASES = [
    # seed, batch, ratios, scales, pre, post, min_size, nms, score levels, image (h, w, scale)
    (0, 1, [0.5, 1, 2], [8, 16], 200, 30, 16, 0.7, None, (96, 128, 1)),
    (1, 2, [1], [8, 16, 32], 40, 12, 8, 0.5, 4, (80, 100, 2)),  # batch 2: item 0's im_info for both
    (2, 1, [0.5, 2], [16], 1000, 50, 24, 0.3, 3, (64, 64, 1)),  # pre > proposals, many zero scores
    (3, 2, [1, 2], [4, 12], 7, 5, 4, 0.9, 2, (50, 70, 1)),  # tiny pre_nms_topn: partial sort
]


@pytest.mark.parametrize("case", PROPOSAL_CASES)
def test_caffe_proposal_matches_the_oracle_row_for_row(tmp_path, case):
    seed, batch, ratios, scales, pre, post, min_size, nms, levels, image = case
    anchors, height, width = len(ratios) * len(scales), 5, 7
    cls, deltas = _rpn_inputs(seed, batch, anchors, height, width, levels)
    info = np.tile(np.array([image], np.float32), (batch, 1))
    info[1:] += 10  # later items' im_info must be ignored
    param = (
        "proposal_param { feat_stride: 16 base_size: 16 "
        f"min_size: {min_size} {' '.join(f'ratio: {r}' for r in ratios)} {' '.join(f'scale: {s}' for s in scales)} "
        f"pre_nms_topn: {pre} post_nms_topn: {post} nms_thresh: {nms} }}"
    )
    text = _inputs(cls=cls.shape, deltas=deltas.shape, info=info.shape) + (
        f'\nlayer {{ name: "proposal" type: "Proposal" bottom: "cls" bottom: "deltas" bottom: "info" '
        f'top: "rois" top: "scores" {param} }}'
    )
    blobs = _run(tmp_path, text, {"cls": cls, "deltas": deltas, "info": info})
    layer = _layer(f'name: "proposal" type: "Proposal" top: "rois" top: "scores" {param}')
    rois, scores = ref.caffe_proposal([cls, deltas, info], layer)
    assert_close(blobs["rois"], rois, "rois")
    assert_close(blobs["scores"], scores, "scores")
    assert set(np.unique(rois[:, 0])) == set(range(batch))


def test_caffe_sort_box_emulation_handles_sorted_and_tied_keys(tmp_path):
    """Ascending, descending and all-equal scores are the quicksort's degenerate cases."""
    for keys in (np.arange(12.0), np.arange(12.0)[::-1], np.zeros(12), np.tile([0.0, 1.0, 0.5], 4)):
        cls = np.zeros((1, 2, 3, 4), np.float32)
        cls[0, 1] = keys.reshape(3, 4)
        deltas = np.zeros((1, 4, 3, 4), np.float32)
        info = np.array([[64, 64, 1]], np.float32)
        param = "proposal_param { min_size: 1 ratio: 1 scale: 16 pre_nms_topn: 9 post_nms_topn: 12 nms_thresh: 2 }"
        text = _inputs(cls=(1, 2, 3, 4), deltas=(1, 4, 3, 4), info=(1, 3)) + (
            f'\nlayer {{ name: "p" type: "Proposal" bottom: "cls" bottom: "deltas" bottom: "info" top: "rois" {param} }}'
        )
        folder = tmp_path / f"k{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        blobs = _run(folder, text, {"cls": cls, "deltas": deltas, "info": info})
        (rois,) = ref.caffe_proposal(
            [cls, deltas, info], _layer(f'name: "p" type: "Proposal" top: "rois" {param}')
        )
        assert_close(blobs["rois"], rois, f"keys {keys}")


PY_PARAMS = [
    "'feat_stride': 16",
    "'feat_stride': 16\\n'scales': !!python/tuple [4, 8, 16]",  # py-R-FCN style scales
    "{'feat_stride': 8, 'ratios': [1, 2], 'scales': [2, 4], 'base_size': 8}",
]


@pytest.mark.parametrize("param_str", PY_PARAMS)
def test_python_proposal_layer_matches_py_faster_rcnn(tmp_path, param_str):
    params = parse_param_str(param_str.replace("\\n", "\n"))
    anchors = len(params.get("ratios", [0.5, 1, 2])) * len(params.get("scales", [8, 16, 32]))
    cls, deltas = _rpn_inputs(7, 1, anchors, 6, 8, None)
    info = np.array([[90, 120, 0.8]], np.float32)
    text = _inputs(cls=cls.shape, deltas=deltas.shape, im_info=(1, 3)) + (
        '\nlayer { name: "proposal" type: "Python" bottom: "cls" bottom: "deltas" bottom: "im_info" '
        f'top: "rois" top: "scores" python_param {{ module: "rpn.proposal_layer" layer: "ProposalLayer" '
        f'param_str: "{param_str}" }} }}'
    )
    blobs = _run(tmp_path, text, {"cls": cls, "deltas": deltas, "im_info": info})
    layer = ref.parse_net(text).layer[-1]
    rois, scores = ref.python_proposal([cls, deltas, info], layer)
    assert len(rois) > 5
    assert_close(blobs["rois"], rois, "rois")
    assert_close(blobs["scores"], scores, "scores")


def test_python_proposal_agrees_with_opencv_proposal(tmp_path):
    """OpenCV 4's C++ Proposal follows py-faster-rcnn (its anchors, sort, NMS) but keeps boxes below
    min_size, which py-faster-rcnn removes before sorting: without those rows, the same rows in order."""
    cv2 = pytest.importorskip("cv2")
    anchors, height, width = 9, 12, 16
    cls, deltas = _rpn_inputs(5, 1, anchors, height, width, None)
    info = np.array([[190, 250, 1.0]], np.float32)
    inputs = _inputs(cls=cls.shape, deltas=deltas.shape, im_info=(1, 3))
    python = inputs + (
        '\nlayer { name: "proposal" type: "Python" bottom: "cls" bottom: "deltas" bottom: "im_info" top: "rois" '
        'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': 16" } }'
    )
    blobs = _run(tmp_path, python, {"cls": cls, "deltas": deltas, "im_info": info})
    native = inputs + (
        '\nlayer { name: "proposal" type: "Proposal" bottom: "cls" bottom: "deltas" bottom: "im_info" top: "rois" '
        "proposal_param { feat_stride: 16 base_size: 16 min_size: 16 ratio: 0.5 ratio: 1 ratio: 2 scale: 8 "
        "scale: 16 scale: 32 pre_nms_topn: 6000 post_nms_topn: 300 nms_thresh: 0.7 } }"
    )
    (tmp_path / "opencv.prototxt").write_text(native)
    net = cv2.dnn.readNetFromCaffe(str(tmp_path / "opencv.prototxt"))
    for name, value in (("cls", cls), ("deltas", deltas), ("im_info", info)):
        net.setInput(value, name)
    rows = np.asarray(net.forward("proposal")).reshape(-1, 5)
    sides = rows[:, 3:5] - rows[:, 1:3] + 1
    large = rows[(sides >= 16).all(axis=1)]
    assert 50 < len(blobs["rois"]) < len(rows)
    assert_close(blobs["rois"], large[: len(blobs["rois"])], "OpenCV Proposal without its small boxes")


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            'type: "Python" bottom: "a" top: "b" python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" }',
            "(module roi_data_layer.layer, layer RoIDataLayer) is not supported",
        ),
        (
            'type: "Python" bottom: "a" bottom: "a" bottom: "a" top: "b" python_param { module: "rpn.proposal_layer" '
            "layer: \"ProposalLayer\" param_str: \"'feat_stride': 16, 'pre_nms_topN': 100\" }",
            "pre_nms_topN",
        ),
        (
            'type: "PSROIPooling" bottom: "a" bottom: "r" top: "b" psroi_pooling_param { spatial_scale: 1 '
            "output_dim: 2 group_size: 2 }",
            "output_dim * group_size^2 = 8",
        ),
        (
            'type: "Proposal" bottom: "a" bottom: "d" bottom: "i6" top: "b" proposal_param { ratio: 1 scale: 8 }',
            "PVANet-family",
        ),
        (
            'type: "Proposal" bottom: "a" bottom: "a" bottom: "a" top: "b" proposal_param { scale: 8 }',
            "ratio",
        ),
    ],
)
def test_refusals_name_the_problem(tmp_path, layer, message):
    text = _inputs(a=(1, 2, 4, 4), d=(1, 4, 4, 4), i6=(1, 6), r=(3, 5)) + f'\nlayer {{ name: "x" {layer} }}'
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)):
        convert_text(tmp_path, text)


def test_param_str_forms():
    assert parse_param_str("'feat_stride': 16") == {"feat_stride": 16}
    assert parse_param_str("feat_stride: 16\nscales: !!python/tuple [8, 16]") == {
        "feat_stride": 16,
        "scales": [8, 16],
    }
    assert parse_param_str("{'feat_stride': 16, 'ratios': [0.5, 1]}") == {
        "feat_stride": 16,
        "ratios": [0.5, 1],
    }


FASTER_RCNN = """name: "tiny_faster_rcnn"
input: "data"
input_shape { dim: 1 dim: 3 dim: 24 dim: 32 }
input: "im_info"
input_shape { dim: 1 dim: 3 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "rpn_conv" type: "Convolution" bottom: "pool2" top: "rpn_conv"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "rpn_relu" type: "ReLU" bottom: "rpn_conv" top: "rpn_conv" }
layer { name: "rpn_cls_score" type: "Convolution" bottom: "rpn_conv" top: "rpn_cls_score"
  convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "rpn_conv" top: "rpn_bbox_pred"
  convolution_param { num_output: 24 kernel_size: 1 } }
layer { name: "rpn_cls_score_reshape" type: "Reshape" bottom: "rpn_cls_score" top: "rpn_cls_score_reshape"
  reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
layer { name: "rpn_cls_prob_reshape" type: "Reshape" bottom: "rpn_cls_prob" top: "rpn_cls_prob_reshape"
  reshape_param { shape { dim: 0 dim: 12 dim: -1 dim: 0 } } }
layer { name: "proposal" type: "Python" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred"
  bottom: "im_info" top: "rois"
  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer"
    param_str: "{'feat_stride': 4, 'scales': [1, 2], 'ratios': [0.5, 1, 2]}" } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv2" bottom: "rois" top: "pool5"
  roi_pooling_param { pooled_w: 3 pooled_h: 3 spatial_scale: 0.5 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 16 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc6" top: "cls_score" inner_product_param { num_output: 3 } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc6" top: "bbox_pred" inner_product_param { num_output: 12 } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
"""


CPP_PROPOSAL = """layer { name: "proposal" type: "Proposal" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred"
  bottom: "im_info" top: "rois"
  proposal_param { feat_stride: 4 base_size: 4 min_size: 4 ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16
    pre_nms_topn: 250 post_nms_topn: 400 nms_thresh: 0.6 } }"""


@pytest.mark.parametrize("proposal", ["python", "c++"])
@pytest.mark.parametrize("image_scale", [0.25, 100.0])  # 100: py-faster-rcnn filters every box out
def test_tiny_faster_rcnn_end_to_end(tmp_path, proposal, image_scale):
    """conv -> RPN -> proposal -> ROIPooling -> fc -> cls_prob / bbox_pred: every blob as the oracle, with
    fewer rows than the layer's maximum (ONNX Runtime must not take the declared bound as the shape)."""
    text = FASTER_RCNN
    if proposal == "c++":
        start = text.index('layer { name: "proposal"')
        text = text[:start] + CPP_PROPOSAL + text[text.index('layer { name: "roi_pool"') - 1 :]
    result, weights, onnx_path = convert_text(tmp_path, text)
    rng = np.random.default_rng(11)
    feeds = {
        "data": rng.normal(0, 1, (1, 3, 24, 32)).astype(np.float32),
        "im_info": np.array([[24, 32, image_scale]], np.float32),
    }
    blobs = blobs_of(result, onnx_path, feeds)
    expected = ref.forward(text, {n: arrays for n, (_, arrays) in weights.record.items()}, feeds)
    maximum = 300 if proposal == "python" else 250
    if proposal == "python" and image_scale > 1:
        assert len(expected["rois"]) == 0
    else:
        assert 5 < len(expected["rois"]) < maximum
    for name in ("rpn_cls_prob_reshape", "rois", "pool5", "fc6", "cls_prob", "bbox_pred"):
        assert_close(blobs[name], expected[name], name)
