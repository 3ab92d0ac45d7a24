"""The saliency methods on small nets where the answer is known, the Grad-CAM = CAM identity on GAP nets
(golden GoogLeNet-CAM and the real SqueezeNet when ../shared is present), targets and refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camcaffe.convert.api import Preprocessing, convert_files
from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
from camcaffe.errors import CamcaffeError
from camcaffe.explain.cam import normalize
from camcaffe.explain.methods import METHODS, MethodBatch, make_method
from camcaffe.explain.methods.eigencam import principal_projection
from camcaffe.runtime.session import ModelSession
from tests.helpers import convert_text, net_text, shared_path

GAP_NET = net_text(
    (1, 3, 24, 24),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)

# A VGG-like net without a CAM head: conv -> in-place ReLU -> max pooling -> fc -> ReLU -> dropout -> fc.
VGG_LIKE = net_text(
    (1, 3, 16, 16),
    """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool" top: "fc6" inner_product_param { num_output: 16 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }
""",
)


@pytest.fixture(scope="module")
def gap(tmp_path_factory):
    _, _, path = convert_text(tmp_path_factory.mktemp("gap"), GAP_NET, seed=3)
    return ModelSession(path, "cpu")


@pytest.fixture(scope="module")
def vgg_like(tmp_path_factory):
    _, _, path = convert_text(tmp_path_factory.mktemp("vgg"), VGG_LIKE, seed=4)
    return ModelSession(path, "cpu")


def _batch(session, method, n: int = 2, k: int = 2, seed: int = 0) -> MethodBatch:
    rng = np.random.default_rng(seed)
    shape = [d.dim_value or n for d in session.model.graph.input[0].type.tensor_type.shape.dim]
    inputs = rng.normal(0, 50, size=(n, *shape[1:])).astype(np.float32)
    head = method.head
    names = [head.feature_blob, head.prob_output or head.score_tensor]
    values = session.run({session.input_names[0]: inputs}, names)
    probabilities = values[names[1]].reshape(n, -1)
    classes = np.argsort(-probabilities, axis=1)[:, :k].astype(np.int64)
    return MethodBatch(inputs, values[names[0]], probabilities, classes)


def _gap_parts(session):
    cam = make_method("cam", session)
    return cam, cam.head.weights, cam.head.bias


def test_every_method_is_registered():
    assert list(METHODS) == ["cam", "gradcam", "gradcam++", "layercam", "scorecam", "ablationcam", "eigencam"]
    with pytest.raises(CamcaffeError, match="--method nope: unknown; choose one of cam, gradcam"):
        make_method("nope", None)


def test_gradcam_equals_cam_on_a_gap_net(gap):
    cam, weights, _ = _gap_parts(gap)
    gradcam = make_method("gradcam", gap, batch_size=3)
    batch = _batch(gap, gradcam, n=3, k=4)
    expected = np.maximum(cam.maps(batch), 0)
    got = gradcam.maps(batch)
    area = batch.features.shape[2] * batch.features.shape[3]
    np.testing.assert_allclose(got, expected / area, rtol=1e-4, atol=1e-6)  # the factor is 1 / (h w)
    assert np.abs(normalize(got) - normalize(expected)).max() <= 1e-5


def test_layercam_and_gradcam_pp_closed_forms_on_a_gap_net(gap):
    _, weights, _ = _gap_parts(gap)
    batch = _batch(gap, make_method("gradcam", gap), n=2, k=2)
    features = batch.features.astype(np.float64)
    area = features.shape[2] * features.shape[3]
    for n in range(2):
        for j, c in enumerate(batch.classes[n]):
            g = weights[c].astype(np.float64) / area  # d score / d A_k(x, y) is the same at every position
            layercam = np.maximum(np.einsum("k,khw->hw", np.maximum(g, 0), features[n]), 0)
            got = make_method("layercam", gap).maps(batch)[n, j]
            np.testing.assert_allclose(got, layercam, rtol=1e-4, atol=1e-6)
            alpha = g**2 / (2 * g**2 + features[n].sum(axis=(1, 2)) * g**3)
            plus = np.maximum(np.einsum("k,khw->hw", area * alpha * np.maximum(g, 0), features[n]), 0)
            got = make_method("gradcam++", gap).maps(batch)[n, j]
            np.testing.assert_allclose(got, plus, rtol=1e-3, atol=1e-6)


def test_ablationcam_weights_are_the_relative_score_drop(gap):
    _, weights, bias = _gap_parts(gap)
    method = make_method("ablationcam", gap, batch_size=5)
    batch = _batch(gap, method, n=2, k=2)
    features = batch.features.astype(np.float64)
    pooled = features.mean(axis=(2, 3))
    got = method.maps(batch)
    for n in range(2):
        for j, c in enumerate(batch.classes[n]):
            score = pooled[n] @ weights[c] + bias[c]
            drop = weights[c] * pooled[n] / score  # zeroing channel k removes W[c, k] mean(A_k)
            expected = np.maximum(np.einsum("k,khw->hw", drop, features[n]), 0)
            np.testing.assert_allclose(got[n, j], expected, rtol=1e-3, atol=1e-5)


def test_scorecam_batched_equals_one_by_one(gap):
    batched = make_method("scorecam", gap, batch_size=5)
    single = make_method("scorecam", gap, batch_size=1)
    batch = _batch(gap, batched, n=2, k=2)
    np.testing.assert_allclose(batched.maps(batch), single.maps(batch), rtol=1e-5, atol=1e-7)


def test_scorecam_weights_are_masked_input_probabilities(gap):
    method = make_method("scorecam", gap, batch_size=4)
    batch = _batch(gap, method, n=1, k=1)
    features = batch.features[0]
    height, width = batch.inputs.shape[2:]
    weights = []
    for channel in features:
        up = cv2.resize(channel, (width, height), interpolation=cv2.INTER_LINEAR)
        span = up.max() - up.min()
        mask = (up - up.min()) / span if span > 0 else np.zeros_like(up)
        prob = gap.run({"data": batch.inputs * mask}, ["prob"])["prob"]
        weights.append(prob[0, batch.classes[0, 0]])
    expected = np.maximum(np.einsum("k,khw->hw", np.asarray(weights), features), 0)
    np.testing.assert_allclose(method.maps(batch)[0, 0], expected, rtol=1e-4, atol=1e-6)


def test_eigencam_recovers_a_rank_one_pattern():
    rng = np.random.default_rng(0)
    pattern = rng.random((7, 9))
    loadings = rng.random(16) + 0.5
    features = loadings[:, None, None] * pattern + 0.01 * rng.normal(size=(16, 7, 9)) + 3.0
    projection = principal_projection(features.astype(np.float32))
    assert np.corrcoef(projection.ravel(), pattern.ravel())[0, 1] > 0.99  # sign follows the activations
    inverted = principal_projection((-loadings[:, None, None] * pattern + 10.0).astype(np.float32))
    assert np.corrcoef(inverted.ravel(), -pattern.ravel())[0, 1] > 0.99


def test_eigencam_is_class_agnostic(gap):
    method = make_method("eigencam", gap)
    maps = method.maps(_batch(gap, method, n=2, k=3))
    assert maps.shape[:2] == (2, 3) and np.array_equal(maps[:, 0], maps[:, 2])


def test_target_of_a_net_without_cam_head(vgg_like):
    method = make_method("gradcam", vgg_like)
    head = method.head
    assert head.feature_blob == "conv2"  # the last convolution, after its in-place ReLU
    assert head.score_tensor == "fc7" and head.prob_output == "prob" and head.num_classes == 5
    with pytest.raises(CamcaffeError, match="no CAM head"):
        make_method("cam", vgg_like)
    named = make_method("gradcam", vgg_like, feature_layer="conv1")
    assert named.head.feature_blob == "conv1"  # the Caffe blob = the value after relu1
    with pytest.raises(CamcaffeError, match="feature layer 'conv9' is not in the model; closest: conv"):
        make_method("gradcam", vgg_like, feature_layer="conv9")
    with pytest.raises(CamcaffeError, match="does not feed the class scores"):
        make_method("gradcam", vgg_like, feature_layer="prob")


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "layercam", "scorecam", "ablationcam", "eigencam"])
def test_every_method_runs_in_the_pipeline(vgg_like, tmp_path, name):
    preprocess, _ = preprocess_from_metadata(vgg_like, Preprocess())
    pipeline = CamPipeline(vgg_like, preprocess, CamSettings(top_k=2, method=name, batch_size=4))
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    (outcome,) = pipeline.process([image], ["img"], tmp_path)
    assert outcome.error is None and outcome.cams.shape == (2, 16, 16) and len(outcome.rows) == 2
    assert np.isfinite(outcome.cams).all() and (tmp_path / "img_cam.png").exists()
    if name != "eigencam":
        assert outcome.cams.min() >= 0


def test_net_without_softmax_gets_probabilities_from_its_scores(tmp_path):
    text = VGG_LIKE.replace('layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }', "")
    _, _, path = convert_text(tmp_path, text, seed=4)
    session = ModelSession(path, "cpu")
    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamPipeline(session, preprocess, CamSettings(method="gradcam"))
    assert pipeline.head.prob_output is None and pipeline.head.score_tensor == "fc7"
    probabilities, _ = pipeline.infer(np.zeros((2, 3, 16, 16), np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_gradient_methods_refuse_an_undifferentiable_tail(tmp_path):
    text = VGG_LIKE.replace(
        'layer { name: "drop6"',
        'layer { name: "thr6" type: "Threshold" bottom: "fc6" top: "fc6" }\nlayer { name: "drop6"',
    )
    _, _, path = convert_text(tmp_path, text, seed=4)
    session = ModelSession(path, "cpu")
    with pytest.raises(CamcaffeError, match=r"after feature 'conv2': 'thr6' \(Cast\) casts the result of a Greater"):
        make_method("gradcam", session)
    assert make_method("scorecam", session).head.feature_blob == "conv2"  # gradient-free methods still work


# ------------------------------------------------------------------------------------------------ real nets


def _identity_error(session: ModelSession, inputs: np.ndarray, k: int = 5) -> float:
    cam = make_method("cam", session)
    gradcam = make_method("gradcam", session)
    assert gradcam.head.feature_blob == cam.head.feature_blob
    names = [cam.head.feature_blob, gradcam.head.score_tensor]
    values = session.run({session.input_names[0]: inputs}, names)
    probabilities = values[names[1]].reshape(len(inputs), -1)  # logits rank as the probabilities do
    classes = np.argsort(-probabilities, axis=1)[:, :k].astype(np.int64)
    batch = MethodBatch(inputs, values[names[0]], probabilities, classes)
    expected = normalize(np.maximum(cam.maps(batch), 0))
    return float(np.abs(normalize(gradcam.maps(batch)) - expected).max())


def test_gradcam_equals_cam_on_golden_googlenet_cam(tmp_path):
    folder = shared_path("golden", "googlenet_cam")
    convert_files(folder / "deploy.prototxt", folder / "weights.caffemodel", tmp_path / "g.onnx")
    session = ModelSession(tmp_path / "g.onnx", "cpu")
    assert make_method("gradcam", session).head.feature_blob == "CAM_conv"
    assert _identity_error(session, np.load(folder / "input.npy")) <= 1e-5


def test_gradcam_equals_cam_on_real_squeezenet(tmp_path):
    folder = shared_path("data", "models", "squeezenet_v1.0")
    images = sorted(shared_path("data", "images").glob("*.jpg"))[:2]
    convert_files(
        folder / "deploy.prototxt",
        folder / "weights.caffemodel",
        tmp_path / "s.onnx",
        preprocessing=Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
    )
    session = ModelSession(tmp_path / "s.onnx", "cpu")
    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamPipeline(session, preprocess, CamSettings())
    inputs = np.concatenate([pipeline.load(path)[1] for path in images])
    assert _identity_error(session, inputs) <= 1e-5


@pytest.mark.parametrize(
    ("graph", "layout"),
    [
        ("transpose_squeeze", "nhwc"),  # Cast -> Transpose to channels-first
        ("reduce_nhwc", "nhwc"),  # ReduceMean over (1, 2)
        ("reduce_nchw", "nchw"),
        ("runtime_reshape", "nchw"),  # GlobalAveragePool
    ],
)
def test_feature_layout_from_the_ops_that_read_it(graph, layout):
    from camcaffe.explain.methods.target import _Lookup, feature_layout
    from tests import onnx_graphs

    models = {
        "transpose_squeeze": onnx_graphs.transpose_squeeze,
        "reduce_nhwc": lambda: onnx_graphs.reduce_tail("ReduceMean", [1, 2], 0, 5, cast=True),
        "reduce_nchw": lambda: onnx_graphs.reduce_tail("ReduceMean", [2, 3], 0, 4),
        "runtime_reshape": onnx_graphs.runtime_reshape,
    }
    assert feature_layout(_Lookup(models[graph]()), "x") == layout
