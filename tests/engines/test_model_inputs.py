"""Models whose input is not the usual fixed-size, variable-batch N,C,H,W: a variable height/width must
not be fed at 1x1 (it was, with exit 0) but at --input-size, the metadata's size, or each image's own size;
and a fixed batch of 1 must take any --batch-size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli.test_cli import assert_one_line_error, camcaffe


def _cam_model(path: Path, input_dims: list, pool: int = 0) -> Path:
    """conv 3->4 + ReLU [+ a `pool` x `pool` max pool, stride 1], global average pool, Gemm 4->3, Softmax; input
    dims as given (str = symbolic)."""
    rng = np.random.default_rng(3)
    inits = {
        "W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "B": rng.normal(0, 0.1, 4).astype(np.float32),
        "fcW": rng.normal(0, 1.0, (3, 4)).astype(np.float32),
        "fcB": rng.normal(0, 0.1, 3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["data", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu" if pool else "feat"]),
        *([helper.make_node("MaxPool", ["relu"], ["feat"], kernel_shape=[pool, pool])] if pool else []),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fcW", "fcB"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(5):
        cv2.imwrite(str(folder / f"p{index}.png"), rng.integers(0, 255, (30 + index, 40, 3), dtype=np.uint8))
    return folder


def _reference(model: Path, photo: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, CAM of every class) of the unresized photo, by onnxruntime and numpy: Caffe's default
    preprocessing (BGR 0-255 minus 104,117,123) at the photo's own size."""
    import onnxruntime

    graph = onnx.load(model)
    graph.graph.output.append(helper.make_empty_tensor_value_info("feat"))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = cv2.imread(str(photo)).astype(np.float32) - np.array([104, 117, 123], np.float32)
    probabilities, features = session.run(["prob", "feat"], {"data": pixels.transpose(2, 0, 1)[None]})
    weights = numpy_helper.to_array(next(t for t in graph.graph.initializer if t.name == "fcW"))
    return probabilities[0], np.einsum("kc,chw->khw", weights, features[0])


def test_variable_height_width_runs_each_image_at_its_own_size(tmp_path, photos):
    """No --input-size: each photo goes in unresized (five sizes here), as the frameworks' tutorials feed it;
    its probabilities and raw map are those of the model run on that photo alone."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "--save-npy", "--top-k", "3", "-q")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 15 and (table["error"].isna() | (table["error"] == "")).all()
    for photo in sorted(photos.iterdir()):
        rows = table[table["image"] == str(photo)].sort_values("rank")
        probabilities, cams = _reference(model, photo)
        np.testing.assert_allclose(rows["probability"], probabilities[rows["class_index"]], rtol=1e-5)
        saved = np.load(tmp_path / "out" / f"{photo.stem}_cam.npy")
        height, width = cv2.imread(str(photo)).shape[:2]
        assert saved.shape == (3, height, width)  # the feature map of an unpooled net: the photo's size
        np.testing.assert_allclose(saved, cams[rows["class_index"].to_numpy()], rtol=1e-4, atol=1e-4)
        assert (rows["x1"] < width).all() and (rows["y1"] < height).all()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--resize", "crop"], "--resize crop"),
        (["--crops", "10"], "--crops 10"),
    ],
)
def test_variable_height_width_with_a_fixed_size_view_is_refused(tmp_path, photos, flags, named):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", *flags)
    assert_one_line_error(result, "variable height/width", named, "--input-size")
    assert not (tmp_path / "out" / "results.csv").exists()


def test_one_variable_side_is_refused(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, 24, "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out")
    assert_one_line_error(result, "one variable side", "--input-size")


def test_variable_height_width_with_a_size_in_the_metadata_takes_that_size(tmp_path, photos):
    """A fixed-size preprocessing recorded in the model's metadata wins over the images' own sizes."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    stored = onnx.load(model)
    preprocess = (
        '{"mean": [104, 117, 123], "raw_scale": 255, "channel_swap": [2, 1, 0], "input_size": [24, 20]}'
    )
    onnx.helper.set_model_props(stored, {"camcaffe.preprocess": preprocess})
    onnx.save(stored, tmp_path / "meta.onnx")
    result = camcaffe("cam", tmp_path / "meta.onnx", photos, "--out", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    given = camcaffe("cam", model, photos, "--out", tmp_path / "out2", "--input-size", "24,20", "-q")
    assert given.returncode == 0, given.stderr
    ours, theirs = (pd.read_csv(tmp_path / name / "results.csv") for name in ("out", "out2"))
    np.testing.assert_allclose(ours["probability"], theirs["probability"], rtol=1e-6)


def test_variable_height_width_with_a_size_written_by_meta_takes_that_size(tmp_path, photos):
    """`camcaffe meta --input-size` records the size; cam then feeds it as if --input-size were given."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    annotated = tmp_path / "annotated.onnx"
    annotated.write_bytes(model.read_bytes())
    assert camcaffe("meta", annotated, "--input-size", "24,20", "-q").returncode == 0
    result = camcaffe("cam", annotated, photos, "--out", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    given = camcaffe("cam", model, photos, "--out", tmp_path / "out2", "--input-size", "24,20", "-q")
    assert given.returncode == 0, given.stderr
    ours, theirs = (pd.read_csv(tmp_path / name / "results.csv") for name in ("out", "out2"))
    np.testing.assert_allclose(ours["probability"], theirs["probability"], rtol=1e-6)
    assert ours["class_index"].tolist() == theirs["class_index"].tolist()


def test_bad_input_size_in_the_metadata_is_one_line(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    stored = onnx.load(model)
    onnx.helper.set_model_props(stored, {"camcaffe.preprocess": '{"input_size": [24]}'})
    onnx.save(stored, tmp_path / "meta.onnx")
    result = camcaffe("cam", tmp_path / "meta.onnx", photos, "--out", tmp_path / "out")
    assert_one_line_error(result, "input_size", "[H, W]")


def test_an_image_too_small_for_the_net_fails_alone(tmp_path, photos):
    """A photo smaller than the net's pooling window cannot run at its own size: that image gets an error row
    (exit 1), the others their maps."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"], pool=8)
    cv2.imwrite(str(photos / "tiny.png"), np.full((4, 5, 3), 90, np.uint8))
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "-q")
    assert result.returncode == 1, result.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv", keep_default_na=False)
    failed = table[table["error"] != ""]
    assert list(failed["image"]) == [str(photos / "tiny.png")]
    assert "4x5" in failed["error"].iloc[0] and "--input-size" in failed["error"].iloc[0]
    assert (table[table["error"] == ""]["probability"].astype(float) > 0).all()


def test_images_of_one_size_run_together(tmp_path, photos, monkeypatch):
    """A batch with photos of two sizes makes one inference per size, in input order of the outcomes."""
    from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess
    from camcaffe.runtime.session import ModelSession

    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    for name, size in (("a", 30), ("b", 31), ("c", 30), ("d", 31), ("e", 30)):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((size, 40, 3), 100, np.uint8))
    pipeline = CamPipeline(ModelSession(model, "cpu"), Preprocess(), CamSettings())
    assert pipeline.feed_hw is None
    shapes: list[tuple] = []
    infer = pipeline.infer
    monkeypatch.setattr(pipeline, "infer", lambda batch: shapes.append(batch.shape) or infer(batch))
    paths = [tmp_path / f"{name}.png" for name in "abcde"]
    outcomes = pipeline.process(paths, list("abcde"), None)
    assert shapes == [(3, 3, 30, 40), (2, 3, 31, 40)]
    assert [o.path for o in outcomes] == paths
    assert [o.cams.shape[1:] for o in outcomes] == [(30, 40), (31, 40), (30, 40), (31, 40), (30, 40)]


def test_variable_height_width_runs_at_the_given_input_size(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "--input-size", "24,20", "-q")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 5 and table["probability"].between(0, 1).all()
    # the same images at a fixed 24x20 model give the same probabilities
    fixed = _cam_model(tmp_path / "f.onnx", ["N", 3, 24, 20])
    again = camcaffe("cam", fixed, photos, "--out", tmp_path / "out2", "-q")
    assert again.returncode == 0, again.stderr
    reference = pd.read_csv(tmp_path / "out2" / "results.csv")
    np.testing.assert_allclose(table["probability"], reference["probability"], rtol=1e-5)


def test_input_size_that_contradicts_a_fixed_input_is_refused(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, 24, 20])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "--input-size", "32,32")
    assert_one_line_error(result, "fixed at 24x20", "--input-size")


def test_fixed_batch_of_one_takes_any_batch_size(tmp_path, photos):
    one = _cam_model(tmp_path / "one.onnx", [1, 3, 24, 20])
    free = _cam_model(tmp_path / "free.onnx", ["N", 3, 24, 20])
    for model, out in ((one, "a"), (free, "b")):
        result = camcaffe("cam", model, photos, "--out", tmp_path / out, "--batch-size", "8", "-q")
        assert result.returncode == 0, result.stderr
    a, b = (pd.read_csv(tmp_path / name / "results.csv") for name in "ab")
    assert len(a) == 5
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-5)
    assert (a[["x0", "y0", "x1", "y1"]].to_numpy() == b[["x0", "y0", "x1", "y1"]].to_numpy()).all()


def test_fixed_batch_of_three_pads_the_last_run(tmp_path, photos):
    three = _cam_model(tmp_path / "three.onnx", [3, 3, 24, 20])
    free = _cam_model(tmp_path / "free.onnx", ["N", 3, 24, 20])
    for model, out in ((three, "a"), (free, "b")):
        result = camcaffe("cam", model, photos, "--out", tmp_path / out, "--batch-size", "4", "-q")
        assert result.returncode == 0, result.stderr
    a, b = (pd.read_csv(tmp_path / name / "results.csv") for name in "ab")
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-5)


SEGMENTATION = """name: "seg"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_a_net_without_a_classification_head_is_named_as_such(tmp_path, photos, method):
    (tmp_path / "seg.prototxt").write_text(SEGMENTATION)
    converted = camcaffe(
        "convert", tmp_path / "seg.prototxt", "-o", tmp_path / "seg.onnx", "--random-weights", "1"
    )
    assert converted.returncode == 0, converted.stderr
    result = camcaffe("cam", tmp_path / "seg.onnx", photos, "--out", tmp_path / "out", "--method", method)
    assert_one_line_error(result, "not an image classifier", "prob ?x5x16x16", "segmentation or detection")
    assert not (tmp_path / "out" / "results.csv").exists()


def test_variable_height_width_with_the_torchvision_resize_takes_its_224_crop(tmp_path, photos):
    """--preset torchvision is Resize(256) + CenterCrop(224): on a model of variable size the crop is 224."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe(
        "cam", model, photos, "--out", tmp_path / "out", "--preset", "torchvision", "--save-npy"
    )
    assert result.returncode == 0, result.stderr
    assert "each image at its own size" not in result.stderr
    given = camcaffe(
        "cam",
        model,
        photos,
        "--out",
        tmp_path / "out2",
        "--preset",
        "torchvision",
        "--input-size",
        "224,224",
        "-q",
    )
    assert given.returncode == 0, given.stderr
    ours, theirs = (pd.read_csv(tmp_path / name / "results.csv") for name in ("out", "out2"))
    np.testing.assert_allclose(ours["probability"], theirs["probability"], rtol=1e-6)
    assert np.load(tmp_path / "out" / "p0_cam.npy").shape == (1, 224, 224)


def test_variable_height_width_report_shows_every_image(tmp_path, photos):
    """The report of a run at each image's own size: one card per photo, its overlay at the photo's width."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "--report")
    assert result.returncode == 0, result.stderr
    assert "each image at its own size" in result.stderr
    report = (tmp_path / "out" / "report.html").read_text()
    for photo in sorted(photos.iterdir()):
        assert f"{photo.stem}_cam.png" in report
        overlay = cv2.imread(str(tmp_path / "out" / f"{photo.stem}_cam.png"))
        assert overlay.shape[1] == cv2.imread(str(photo)).shape[1]  # (a caption band is added below)


def test_a_pipeline_keeps_a_bounded_number_of_transformers(tmp_path):
    """Photos of many sizes: one Transformer per size (a mean image resized for each), the oldest dropped."""
    from camcaffe.engines.pipeline import TRANSFORMERS_KEPT, CamPipeline, CamSettings, Preprocess
    from camcaffe.runtime.session import ModelSession

    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    pipeline = CamPipeline(ModelSession(model, "cpu"), Preprocess(), CamSettings())
    for height in range(10, 10 + TRANSFORMERS_KEPT + 5):
        transformer = pipeline.transformer_for((height, 12))
        assert transformer.inputs["data"] == (1, 3, height, 12)
    assert len(pipeline._transformers) == TRANSFORMERS_KEPT
    assert (10 + TRANSFORMERS_KEPT + 4, 12) in pipeline._transformers and (10, 12) not in pipeline._transformers


def test_a_one_channel_input_is_refused_in_one_line(tmp_path, photos):
    """A grey-scale net (1 channel) used to end in an internal error from onnxruntime (colour photos fed)."""
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, 16, 16])
    graph = onnx.load(model)
    graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    weights = next(t for t in graph.graph.initializer if t.name == "W")
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights)[:, :1], "W"))
    onnx.save(graph, tmp_path / "grey.onnx")
    result = camcaffe("cam", tmp_path / "grey.onnx", photos, "--out", tmp_path / "out")
    assert_one_line_error(result, "takes 1 channel(s)", "3-channel")
    assert not (tmp_path / "out" / "results.csv").exists()
