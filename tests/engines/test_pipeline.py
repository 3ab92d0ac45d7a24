"""The CAM pipeline's stages on a small converted model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camcaffe.convert.api import Preprocessing, convert_files
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.engines.inputs import expand_inputs, output_stems
from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
from camcaffe.runtime.session import ModelSession
from tests.helpers import net_text

NET = net_text(
    (1, 3, 32, 32),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "d.prototxt").write_text(NET)
    write_random_caffemodel(folder / "d.prototxt", folder / "w.caffemodel", seed=2)
    labels = folder / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\n")
    convert_files(
        folder / "d.prototxt",
        folder / "w.caffemodel",
        folder / "m.onnx",
        preprocessing=Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
        labels_path=labels,
    )
    return ModelSession(folder / "m.onnx", "cpu")


def _pipeline(session, **settings):
    preprocess, assumed = preprocess_from_metadata(session, Preprocess())
    assert not assumed and preprocess.raw_scale == 255
    return CamPipeline(session, preprocess, CamSettings(**settings))


def test_classes_ranks_and_named_classes(session):
    pipeline = _pipeline(session, top_k=2, classes=["dog", "0"])
    probabilities = np.array([[0.1, 0.5, 0.3, 0.1], [0.7, 0.1, 0.05, 0.15]])
    classes, ranks = pipeline.select_classes(probabilities)
    assert classes[0].tolist() == [1, 2, 3, 0] and ranks[0].tolist() == [
        1,
        2,
        4,
        3,
    ]  # ties: lower index ranks first
    assert classes[1][:2].tolist() == [0, 3] and ranks[1][:2].tolist() == [1, 2]
    with pytest.raises(Exception, match="no such label"):
        _pipeline(session, classes=["zebra"])


def test_process_batch_with_a_bad_image(session, tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    pipeline = _pipeline(session, top_k=1)
    outcomes = pipeline.process([good, bad], ["good", "bad"], tmp_path)
    assert outcomes[0].error is None and outcomes[1].error
    row = outcomes[0].rows[0]
    assert row["label"] in ("ant", "bee", "cat", "dog")
    assert 0 <= row["x0"] <= row["x1"] <= 59 and 0 <= row["y0"] <= row["y1"] <= 39
    assert (tmp_path / "good_cam.png").exists() and outcomes[0].cams.shape == (1, 16, 16)
    # CAM = W[c] . F, checked independently
    _, data = pipeline.load(good)
    values = session.run({"data": data}, ["feat"])
    weights = pipeline.head.weights[row["class_index"]]
    np.testing.assert_allclose(
        outcomes[0].cams[0], np.tensordot(weights, values["feat"][0], axes=1), rtol=1e-5, atol=1e-5
    )


def test_crop_mode_maps_back_into_the_original_image(session):
    pipeline = _pipeline(session, resize="crop", crop_base=40)
    raw = np.ones((1, 16, 16), np.float32)
    raw[0, 8, 8] = 3.0
    maps = pipeline.to_image_space(raw, 80, 80)
    assert maps.shape == (1, 80, 80)
    assert maps[0, :6].max() == 0 and maps[0, -6:].max() == 0  # outside the 32x32 crop of the 40x40 resize
    assert np.unravel_index(maps[0].argmax(), (80, 80)) in {
        (i, j) for i in range(36, 46) for j in range(36, 46)
    }


def test_inputs_expand_folders_globs_and_unique_stems(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.jpg", "a/y.PNG", "b.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    paths, problems = expand_inputs([tmp_path / "a", str(tmp_path / "*.jpg"), str(tmp_path / "none*.png")])
    assert [p.name for p in paths] == ["x.jpg", "y.PNG", "b.jpg"]
    assert problems and "no file matches" in problems[0]
    from pathlib import Path

    assert output_stems([Path("a/x.jpg"), Path("b/x.png"), Path("c/x.gif")]) == ["x", "x_2", "x_3"]


def test_pipeline_pool_keeps_order_and_results(session, tmp_path):
    from camcaffe.engines.workers import PipelinePool, default_workers

    rng = np.random.default_rng(5)
    paths = []
    for i in range(11):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8))
        paths.append(path)
    paths.insert(4, tmp_path / "missing.png")
    stems = [p.stem for p in paths]
    batches = [(paths[i : i + 3], stems[i : i + 3]) for i in range(0, len(paths), 3)]
    single = [o for b in batches for o in _pipeline(session, top_k=2).process(b[0], b[1], None)]
    pool = PipelinePool.build(_pipeline(session, top_k=2), lambda: _pipeline(session, top_k=2), 3)
    pooled = [o for outcomes in pool.map(batches, None) for o in outcomes]
    pool.close()
    assert [o.path for o in pooled] == paths
    assert [o.rows for o in pooled] == [o.rows for o in single]
    assert pooled[4].error and "missing.png" in pooled[4].error
    assert default_workers("CUDAExecutionProvider")[0] == 1
    assert default_workers("CPUExecutionProvider")[0] >= 1


# --- in-graph CAM outputs (camcaffe export-cam / convert --with-cam) ---------------------------------------


@pytest.fixture(scope="module")
def with_cam(session, tmp_path_factory):
    from camcaffe.explain.cam_export import export_cam_file

    out = tmp_path_factory.mktemp("with_cam") / "m_cam.onnx"
    export_cam_file(session.source, out, 3, class_input=True)
    return ModelSession(out, "cpu")


def _images(folder, count: int = 3) -> list:
    rng = np.random.default_rng(5)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (30 + 7 * i, 50, 3), dtype=np.uint8))
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "settings", [{"top_k": 2}, {"top_k": 3, "classes": ["dog", "0"]}, {"top_k": 0, "classes": ["bee"]}]
)
def test_in_graph_outputs_give_the_rows_and_maps_of_the_feature_map_path(
    session, with_cam, tmp_path, settings
):
    paths = _images(tmp_path)
    stems = [p.stem for p in paths]
    plain = _pipeline(session, **settings, write_overlays=False)
    fast = _pipeline(with_cam, **settings, write_overlays=False)
    assert plain.in_graph is None and fast.in_graph is not None
    fetched: list[list[str]] = []
    original = with_cam.run

    def recording(feeds, outputs=None):
        fetched.append(list(outputs or []))
        return original(feeds, outputs)

    with_cam.run = recording  # type: ignore[method-assign]
    try:
        got = fast.process(paths, stems, None)
    finally:
        del with_cam.run
    want = plain.process(paths, stems, None)
    assert fetched and all(
        "feat" not in names for names in fetched
    )  # the feature map never leaves the session
    for a, b in zip(got, want, strict=True):
        assert a.rows == b.rows
        np.testing.assert_allclose(a.cams, b.cams, rtol=1e-5, atol=1e-5 * np.abs(b.cams).max())


def test_in_graph_outputs_are_left_aside_when_they_cannot_stand_in(with_cam):
    assert _pipeline(with_cam, top_k=3).in_graph is not None
    assert _pipeline(with_cam, top_k=4).in_graph is None  # the model maps its top 3 only
    assert _pipeline(with_cam, resize="crop", crop_base=40).in_graph is not None
    preprocess, _ = preprocess_from_metadata(with_cam, Preprocess())
    overridden = CamPipeline(with_cam, preprocess, CamSettings(), feature_layer="feat")
    assert overridden.in_graph is None
    assert _pipeline(with_cam, resize="tencrop", crop_base=40).in_graph is None  # 10 views merged per image
    assert _pipeline(session_without_class_input(with_cam), classes=["dog"]).in_graph is None


def session_without_class_input(with_cam):
    """The same in-graph outputs, but the record says the model has no class input."""
    import json

    from camcaffe.explain.cam_export import METADATA_KEY

    other = with_cam.sibling()
    record = json.loads(with_cam.info.metadata[METADATA_KEY])
    record.update(class_input=None, class_probabilities=None, class_maps=None, class_maps_resized=None)
    other.info = type(with_cam.info)({**with_cam.info.metadata, METADATA_KEY: json.dumps(record)})
    return other


NO_SOFTMAX = net_text(
    (1, 3, 32, 32),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "classes" type: "Convolution" bottom: "feat" top: "classes" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "gap" type: "Pooling" bottom: "classes" top: "gap" pooling_param { pool: AVE global_pooling: true } }
""",
)


def test_without_a_softmax_the_graph_ranking_is_checked_and_a_disagreeing_batch_takes_the_feature_path(
    tmp_path,
):
    """SqueezeNet-style: the pipeline's probabilities are a float64 softmax of the model's pooled class maps; the
    in-graph float32 ranking stands in only where it agrees (here it is made to disagree)."""
    from camcaffe.explain.cam_export import export_cam_file

    (tmp_path / "d.prototxt").write_text(NO_SOFTMAX)
    write_random_caffemodel(tmp_path / "d.prototxt", tmp_path / "w.caffemodel", seed=6)
    convert_files(
        tmp_path / "d.prototxt",
        tmp_path / "w.caffemodel",
        tmp_path / "m.onnx",
        preprocessing=Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
    )
    export_cam_file(tmp_path / "m.onnx", tmp_path / "c.onnx", 2)
    plain, with_cam = ModelSession(tmp_path / "m.onnx", "cpu"), ModelSession(tmp_path / "c.onnx", "cpu")
    paths = _images(tmp_path)
    stems = [p.stem for p in paths]
    settings = {"top_k": 2, "write_overlays": False}
    want = _pipeline(plain, **settings).process(paths, stems, None)
    fast = _pipeline(with_cam, **settings)
    assert fast.in_graph is not None and fast.in_graph.logits == "gap"
    assert [o.rows for o in fast.process(paths, stems, None)] == [o.rows for o in want]
    original = with_cam.run

    def swapped(feeds, outputs=None):
        values = original(feeds, outputs)
        if "cam_top_classes" in values:
            values["cam_top_classes"] = values["cam_top_classes"][:, ::-1].copy()
        return values

    with_cam.run = swapped  # type: ignore[method-assign]
    try:
        assert fast.infer_in_graph(np.concatenate([fast.load(p)[1] for p in paths])) is None
        assert [o.rows for o in fast.process(paths, stems, None)] == [o.rows for o in want]
    finally:
        del with_cam.run


@pytest.mark.parametrize(
    ("dims", "given", "layout"),
    [
        ([1, 3, 224, 224], None, "nchw"),
        (["batch", 224, 224, 3], None, "nhwc"),
        ([None, 32, 32, 1], None, "nhwc"),
        ([1, 3, 8, 3], None, "nchw"),  # second dim 3: channels-first
        ([1, 3, 224, 224], "nhwc", "nhwc"),
        ([1, 224, 224, 3], "nchw", "nchw"),
    ],
)
def test_input_layout(dims, given, layout):
    from camcaffe.engines.pipeline import input_layout

    assert input_layout(dims, given) == layout


def test_unknown_layout_is_refused():
    from camcaffe.engines.pipeline import input_layout
    from camcaffe.errors import CamcaffeError

    with pytest.raises(CamcaffeError, match="--layout nwhc: unknown"):
        input_layout([1, 3, 8, 8], "nwhc")


@pytest.mark.parametrize(
    "settings",
    [
        {"top_k": 2},  # each image at its own size (the input's H, W are variable)
        {
            "top_k": 3,
            "classes": ["2"],
            "resize_filter": "pil-nearest",
            "input_size": (20, 28),
        },  # Pillow's resize
        {"top_k": 0, "classes": ["1", "3"], "resize": "crop", "crop_base": 24, "input_size": (20, 20)},
    ],
)
def test_in_graph_outputs_of_a_channels_last_model_are_fed_channels_last(tmp_path, settings):
    """A Keras-style model (N, H, W, C input, channels-last feature map): the in-graph path feeds the batch in the
    model's layout, as the feature-map path does (before: onnxruntime refused the N, C, H, W batch), and gives
    its rows and maps."""
    from camcaffe.explain.cam_export import export_cam_file
    from tests.explain.test_cam_export import channels_last_model

    plain_path = channels_last_model(tmp_path / "m.onnx", 20, size=("height", "width"))
    export_cam_file(plain_path, tmp_path / "c.onnx", 3, class_input=True)
    plain, with_cam = ModelSession(plain_path, "cpu"), ModelSession(tmp_path / "c.onnx", "cpu")
    preprocess = Preprocess(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0])
    options = CamSettings(**settings, write_overlays=False)
    slow, fast = (CamPipeline(s, preprocess, options) for s in (plain, with_cam))
    assert fast.layout == "nhwc" and fast.in_graph is not None and slow.in_graph is None
    assert (fast.feed_hw is None) == ("input_size" not in settings)
    paths = _images(tmp_path)  # 30, 37 and 44 rows high: three sizes at their own size
    stems = [p.stem for p in paths]
    fetched: list[list[str]] = []
    original = with_cam.run

    def recording(feeds, outputs=None):
        fetched.append(list(outputs or []))
        return original(feeds, outputs)

    with_cam.run = recording  # type: ignore[method-assign]
    try:
        got = fast.process(paths, stems, None)
    finally:
        del with_cam.run
    want = slow.process(paths, stems, None)
    assert fetched and all("feat" not in names for names in fetched)
    for a, b in zip(got, want, strict=True):
        assert a.error is None and a.rows == b.rows
        np.testing.assert_allclose(a.cams, b.cams, rtol=1e-5, atol=1e-5 * np.abs(b.cams).max())


def test_an_empty_in_graph_map_is_an_empty_feature_map_as_on_the_feature_path(with_cam, tmp_path):
    from camcaffe.engines.pipeline import EmptyFeatureMap

    fast = _pipeline(with_cam, top_k=2)
    original = with_cam.run

    def empty(feeds, outputs=None):
        values = original(feeds, outputs)
        values["cam_maps"] = values["cam_maps"][:, :, :0]
        return values

    with_cam.run = empty  # type: ignore[method-assign]
    try:
        with pytest.raises(EmptyFeatureMap, match="32x32 input gives an empty feature map"):
            fast.infer_in_graph(fast.load(_images(tmp_path, 1)[0])[1])
    finally:
        del with_cam.run
