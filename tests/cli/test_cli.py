"""The command line as a user meets it: real processes, one-line errors, exit codes, files left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from camcaffe.convert.random_model import write_random_caffemodel
from tests.helpers import net_text, shared_path

TINY = net_text(
    (1, 3, 16, 16),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "gap" type: "Pooling" bottom: "conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)


def camcaffe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CAMCAFFE_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "camcaffe.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess, *needles: str, code: int | None = None
) -> None:
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("camcaffe: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def tiny(tmp_path):
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(TINY)
    caffemodel = tmp_path / "tiny.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=1)
    return prototxt, caffemodel


def test_convert_inspect_and_verify(tiny, tmp_path):
    prototxt, caffemodel = tiny
    out = tmp_path / "tiny.onnx"
    result = camcaffe("convert", prototxt, caffemodel, "-o", out, "--verify")
    assert result.returncode == 0, result.stderr
    assert "verify:" in result.stderr and out.exists()
    shown = camcaffe("inspect", out)
    assert shown.returncode == 0 and "conv" in shown.stdout and "(6, 3, 3, 3)" in shown.stdout
    shown = camcaffe("inspect", prototxt, caffemodel, "--json")
    assert '"fc": [' in shown.stdout


@pytest.mark.parametrize(
    "case", ["missing", "directory", "swapped", "garbage", "truncated", "other_net", "unsupported"]
)
def test_convert_bad_files(tiny, tmp_path, case):
    prototxt, caffemodel = tiny
    out = tmp_path / "out.onnx"
    args: list = [prototxt, caffemodel]
    needle = ""
    if case == "missing":
        args, needle = [tmp_path / "nope.prototxt", caffemodel], "nope.prototxt: prototxt not found"
    elif case == "directory":
        args, needle = [prototxt, tmp_path], "is a directory"
    elif case == "swapped":
        args, needle = [caffemodel, prototxt], "swap the prototxt and caffemodel"
    elif case == "garbage":
        bad = tmp_path / "bad.caffemodel"
        bad.write_bytes(os.urandom(3000))
        args, needle = [prototxt, bad], "bad.caffemodel"
    elif case == "truncated":
        bad = tmp_path / "cut.caffemodel"
        bad.write_bytes(caffemodel.read_bytes()[:300])
        args, needle = [prototxt, bad], "truncated"
    elif case == "other_net":
        other = tmp_path / "other.prototxt"
        other.write_text(TINY.replace('"conv"', '"conv_x"').replace('"fc"', '"fc_x"'))
        args, needle = [other, caffemodel], "caffemodel of another net"
    elif case == "unsupported":
        weird = tmp_path / "weird.prototxt"
        weird.write_text(
            TINY.replace('type: "ReLU"', 'type: "Bar"').replace('type: "Softmax"', 'type: "Foo"')
        )
        args, needle = [weird, caffemodel], "unsupported type(s): Bar, Foo"
    result = camcaffe("convert", *args, "-o", out)
    assert_one_line_error(result, needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]


def test_wrong_shape_names_layer_and_both_shapes(tiny, tmp_path):
    prototxt, caffemodel = tiny
    other = tmp_path / "wide.prototxt"
    other.write_text(TINY.replace("num_output: 6", "num_output: 8"))
    result = camcaffe("convert", other, caffemodel, "-o", tmp_path / "o.onnx")
    assert_one_line_error(result, "layer 'conv'", "(6, 3, 3, 3)", "(8, 3, 3, 3)")


def test_debug_shows_traceback(tiny, tmp_path):
    result = camcaffe("--debug", "convert", tmp_path / "nope.prototxt", tiny[1], "-o", tmp_path / "o.onnx")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_nan_weights_warn_with_layer_name(tiny, tmp_path):
    prototxt, _ = tiny
    import numpy as np

    from camcaffe.caffe.caffemodel import read_caffemodel, write_caffemodel

    weights = read_caffemodel(tiny[1])
    layers = []
    for name, layer in weights.layers.items():
        blobs = [b.values.reshape(b.shape).copy() for b in layer.blobs]
        if name == "fc":
            blobs[0][0, 0] = np.nan
        layers.append((name, layer.type, blobs))
    bad = tmp_path / "nan.caffemodel"
    write_caffemodel(bad, layers)
    result = camcaffe("convert", prototxt, bad, "-o", tmp_path / "o.onnx")
    assert result.returncode == 0
    assert "warning" in result.stderr and "layer 'fc'" in result.stderr and "NaN/Inf" in result.stderr


def _squeezenet_onnx(tmp_path) -> Path:
    prototxt = shared_path("data", "models", "squeezenet_v1.0", "deploy.prototxt")
    weights = shared_path("data", "models", "squeezenet_v1.0", "weights.caffemodel")
    labels = shared_path("data", "labels", "synset_words.txt")
    out = tmp_path / "squeezenet.onnx"
    result = camcaffe(
        "convert",
        prototxt,
        weights,
        "-o",
        out,
        "--mean",
        "104,117,123",
        "--raw-scale",
        "255",
        "--channel-swap",
        "2,1,0",
        "--labels",
        labels,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_cam_on_real_squeezenet_photos(tmp_path):
    model = _squeezenet_onnx(tmp_path)
    images = shared_path("data", "images")
    out = tmp_path / "cams"
    result = camcaffe("cam", model, images, "--out", out, "--top-k", "2", "--json", "--save-npy")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns[:10]) == [
        "image",
        "rank",
        "class_index",
        "label",
        "probability",
        "x0",
        "y0",
        "x1",
        "y1",
        "overlay",
    ]
    top = table[table["rank"] == 1].set_index(table[table["rank"] == 1]["image"].map(lambda p: Path(p).stem))
    assert "cat" in top.loc["skimage_chelsea", "label"]  # Egyptian cat
    assert top.loc["skimage_coffee", "label"] == "espresso"
    assert abs(top.loc["skimage_coffee", "probability"] - 0.993) < 1e-3
    for row in table.itertuples():
        assert Path(row.overlay).exists()
        assert 0 <= row.x0 <= row.x1 and 0 <= row.y0 <= row.y1
    assert (out / "results.json").exists() and (out / "skimage_chelsea_cam.npy").exists()


def test_cam_reports_bad_images_and_keeps_the_rest(tmp_path):
    model = _squeezenet_onnx(tmp_path)
    folder = tmp_path / "in put ü"
    folder.mkdir()
    (folder / "good photo é.png").write_bytes(
        shared_path("data", "images", "skimage_coffee.png").read_bytes()
    )
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "cut.jpg").write_bytes(shared_path("data", "images", "caffe_cat.jpg").read_bytes()[:2000])
    out = tmp_path / "out"
    result = camcaffe("cam", model, folder, "--out", out)
    assert result.returncode == 1
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    good = table[table["error"] == ""]
    assert len(good) == 1 and good.iloc[0]["label"] == "espresso"
    assert Path(good.iloc[0]["overlay"]).exists()
    bad = table[table["error"] != ""]
    assert {Path(p).name for p in bad["image"]} >= {"empty.jpg", "text.png"}
    assert "Traceback" not in result.stderr


def test_cam_error_cases(tmp_path, tiny):
    prototxt, caffemodel = tiny
    onnx_path = tmp_path / "tiny.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", onnx_path).returncode == 0
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    image = tmp_path / "img.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((20, 30, 3), 128, np.uint8))
    assert_one_line_error(camcaffe("cam", corrupt, image, "--out", tmp_path / "o"), "corrupt.onnx")
    assert_one_line_error(
        camcaffe("cam", onnx_path, image, "--out", tmp_path / "o", "--feature-layer", "convv"),
        "convv",
        "conv",
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert_one_line_error(
        camcaffe("cam", onnx_path, image, "--out", tmp_path / "o", "--labels", labels), "2", "3"
    )
    assert_one_line_error(
        camcaffe("cam", onnx_path, tmp_path / "none*.jpg", "--out", tmp_path / "o"), "no images"
    )
    ok = camcaffe("cam", onnx_path, image, "--out", tmp_path / "o", "--class", "2")
    assert ok.returncode == 0, ok.stderr
    assert "no preprocessing metadata" in ok.stderr


def test_cam_report_flag_writes_the_gallery(tmp_path, tiny):
    import cv2
    import numpy as np

    prototxt, caffemodel = tiny
    onnx_path = tmp_path / "tiny.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", onnx_path).returncode == 0
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(
            str(images / f"p{i}.png"), np.random.default_rng(i).integers(0, 255, (20, 24, 3), np.uint8)
        )
    out = tmp_path / "out"
    result = camcaffe("cam", onnx_path, images, "--out", out, "--report", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    html = (out / "report.html").read_text()
    assert "p0.png" in html and "p2_cam.png" in html


def test_cam_refuses_flag_combinations_that_map_nothing_or_mislead(tmp_path, tiny):
    prototxt, caffemodel = tiny
    onnx_path = tmp_path / "tiny.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", onnx_path).returncode == 0
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    out = tmp_path / "out"
    assert_one_line_error(
        camcaffe("cam", onnx_path, image, "--out", out, "--top-k", "0"), "--top-k 0", "--class"
    )
    assert_one_line_error(
        camcaffe("cam", onnx_path, image, "--out", out, "--crops", "10", "--resize", "crop"), "--crops 10"
    )
    assert_one_line_error(
        camcaffe("cam", onnx_path, image, "--out", out, "--crops", "10", "--method", "eigencam"), "Eigen-CAM"
    )
    assert not out.exists() or not any(out.iterdir())


def test_cam_records_its_settings_for_evaluate(tmp_path, tiny):
    import json

    import cv2
    import numpy as np

    from camcaffe.engines.results import read_cam_settings as _cam_settings

    prototxt, caffemodel = tiny
    onnx_path = tmp_path / "tiny.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", onnx_path).returncode == 0
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((20, 20, 3), 90, np.uint8))
    out = tmp_path / "out"
    result = camcaffe("cam", onnx_path, image, "--out", out, "--method", "gradcam", "--mean", "1,2,3")
    assert result.returncode == 0, result.stderr
    settings = json.loads((out / "cam_settings.json").read_text())
    assert settings["method"] == "gradcam" and settings["preprocess"]["mean"] == [1.0, 2.0, 3.0]
    assert _cam_settings(out / "results.csv") == settings and _cam_settings(tmp_path) == {}


TINY_WORDS = "n00000001 ant, emmet\nn00000002 bee\nn00000003 tabby, tabby cat\n"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The tiny net converted with a synset_words-style label file and preprocessing; and a photo."""
    import cv2
    import numpy as np

    folder = tmp_path_factory.mktemp("labelled")
    prototxt = folder / "tiny.prototxt"
    prototxt.write_text(TINY)
    caffemodel = folder / "tiny.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=1)
    words = folder / "words.txt"
    words.write_text(TINY_WORDS)
    model = folder / "tiny_labelled.onnx"
    flags = ["--labels", words, "--mean", "104,117,123", "--raw-scale", "255"]
    result = camcaffe("convert", prototxt, caffemodel, "-o", model, *flags)
    assert result.returncode == 0, result.stderr
    photo = folder / "photo.png"
    cv2.imwrite(str(photo), np.random.default_rng(3).integers(0, 255, (20, 24, 3), np.uint8))
    return model, photo


def test_inspect_text_shows_embedded_preprocessing_and_labels(labelled, tmp_path, tiny):
    shown = camcaffe("inspect", labelled[0])
    assert shown.returncode == 0, shown.stderr
    assert "preprocessing: mean 104,117,123, raw-scale 255" in shown.stdout
    assert "labels: 3, with synset ids:" in shown.stdout and "  2 n00000003 tabby, tabby cat" in shown.stdout
    prototxt, caffemodel = tiny
    bare = tmp_path / "bare.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", bare).returncode == 0
    shown = camcaffe("inspect", bare)
    assert "preprocessing: none embedded" in shown.stdout and "labels: none embedded" in shown.stdout


def test_cam_class_accepts_synonyms_synset_ids_and_indices(labelled, tmp_path):
    model, photo = labelled
    out = tmp_path / "out"
    names = ["--class", "Tabby Cat", "--class", "tabby", "--class", "n00000003", "--class", "2"]
    result = camcaffe("cam", model, photo, "--out", out, "--top-k", "0", *names)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "results.csv")
    assert table["class_index"].tolist() == [2] and table["label"].tolist() == ["tabby, tabby cat"]


def test_cam_unknown_class_suggests_close_labels(labelled, tmp_path):
    model, photo = labelled
    result = camcaffe("cam", model, photo, "--out", tmp_path / "out", "--class", "tabbby")
    assert_one_line_error(result, "--class 'tabbby': no such label", "'tabby' = 2")


def test_evaluate_reads_synset_ids_from_the_run_model_without_labels(labelled, tmp_path):
    import json

    model, photo = labelled
    out = tmp_path / "run"
    assert camcaffe("cam", model, photo, "--out", out, "--top-k", "3").returncode == 0
    top1 = int(pd.read_csv(out / "results.csv").query("rank == 1")["class_index"].iloc[0])
    gt = tmp_path / "gt.csv"
    gt.write_text(f"image,class,x0,y0,x1,y1\nphoto,n0000000{top1 + 1},0,0,23,19\n")
    result = camcaffe("evaluate", out, "--gt", gt)
    assert result.returncode == 0, result.stderr
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["unknown_ground_truth_classes"] == []
    assert figures["classification_error"] == {"top1": 0.0, "top5": 0.0}


def test_pointing_tolerance_defaults_to_the_documented_15_px():
    from camcaffe.cli.main import build_parser
    from camcaffe.engines.evaluate_run import EvaluateOptions

    args = build_parser().parse_args(["evaluate", "run", "--gt", "gt.csv"])
    assert args.pointing_tolerance == 15 == EvaluateOptions(Path("r"), Path("g")).pointing_tolerance
    assert "default 15 px" in (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_global_flags_work_after_the_subcommand(tmp_path, tiny):
    prototxt, caffemodel = tiny
    onnx_path = tmp_path / "t.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", onnx_path).returncode == 0
    missing = tmp_path / "missing.onnx"
    debug = camcaffe("cam", missing, tmp_path, "--out", tmp_path / "o", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    plain = camcaffe("cam", missing, tmp_path, "--out", tmp_path / "o")
    assert_one_line_error(plain, str(missing))
    import cv2
    import numpy as np

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((20, 20, 3), 90, np.uint8))
    quiet = camcaffe("cam", onnx_path, photo, "--out", tmp_path / "q", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = camcaffe("cam", onnx_path, photo, "--out", tmp_path / "l")
    assert loud.returncode == 0 and "wrote" in loud.stderr


def test_progress_lines_without_a_terminal(tmp_path, tiny):
    prototxt, caffemodel = tiny
    onnx_path = tmp_path / "t.onnx"
    assert camcaffe("convert", prototxt, caffemodel, "-o", onnx_path).returncode == 0
    import cv2
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(6):
        cv2.imwrite(str(folder / f"p{index}.png"), np.full((20, 20, 3), 20 * index, np.uint8))
    env_result = subprocess.run(
        [sys.executable, "-m", "camcaffe.cli", "cam", str(onnx_path), str(folder), "--out", str(tmp_path / "o")]
        + ["--batch-size", "1", "--workers", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "CAMCAFFE_PROGRESS_INTERVAL": "0"},
        timeout=300,
    )
    assert env_result.returncode == 0, env_result.stderr
    lines = [line for line in env_result.stderr.splitlines() if "/6 images" in line]
    assert len(lines) >= 3 and lines[0].startswith("camcaffe: 1/6 images"), env_result.stderr
@pytest.mark.parametrize("external", [False, True])
def test_verify_removes_the_onnx_file_when_opencv_disagrees(tiny, tmp_path, monkeypatch, capsys, external):
    """A real disagreement: our runtime's value of blob 'conv' is nudged by 3e-4 of its maximum (over the
    default 1e-4 tolerance); the real comparison finds it and the files written are removed. A nudge of
    3e-5 stays inside the tolerance and the file is kept."""
    from camcaffe.cli import main
    from camcaffe.convert.verify import opencv_available
    from camcaffe.runtime.session import ModelSession

    if not opencv_available():
        pytest.skip("cv2 without dnn.readNetFromCaffe: --verify has nothing to compare with")
    prototxt, caffemodel = tiny
    real_run = ModelSession.run
    nudge = {"relative": 3e-4}

    def nudged_run(self, feeds, outputs, *args, **kwargs):
        values = real_run(self, feeds, outputs, *args, **kwargs)
        if "conv" in values:
            values["conv"] = values["conv"] + np.float32(
                nudge["relative"] * max(1.0, np.abs(values["conv"]).max())
            )
        return values

    monkeypatch.setattr(ModelSession, "run", nudged_run)
    out = tmp_path / "tiny.onnx"
    flags = ["--external-data"] if external else []
    code = main(["convert", str(prototxt), str(caffemodel), "-o", str(out), "--verify", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert err[-1].startswith("camcaffe: error: verify:") and "differ beyond tolerance: conv (" in err[-1]
    assert f"{out} removed" in err[-1]
    assert not out.exists() and not Path(f"{out}.data").exists() and not list(tmp_path.glob("*.onnx*"))
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

    nudge["relative"] = 3e-5
    code = main(["convert", str(prototxt), str(caffemodel), "-o", str(out), "--verify", *flags])
    err = capsys.readouterr().err
    assert code == 0 and out.exists() and "worst 'conv'" in err, err
    assert Path(f"{out}.data").exists() == external


def _channels_last_classifier(path: Path) -> None:
    """A Keras-like ONNX file: NHWC input, Transpose -> Conv -> Transpose back, float Casts, ReduceMean over
    (1, 2), MatMul + Add, Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "kernel"),
        numpy_helper.from_array(np.asarray([1, 2], np.int64), "hw"),
        numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "dense"),
        numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["cast"], to=1),
        helper.make_node("Transpose", ["cast"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "kernel"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["nhwc"], ["relu"]),
        helper.make_node("ReduceMean", ["relu", "hw"], ["gap"], keepdims=0),
        helper.make_node("MatMul", ["gap", "dense"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "keras_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("flags", [[], ["--method", "gradcam", "--score", "prob", "--layout", "nhwc"]])
def test_cam_on_a_channels_last_model(tmp_path, flags):
    import cv2

    _channels_last_classifier(tmp_path / "m.onnx")
    cv2.imwrite(str(tmp_path / "x.png"), np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    args = ["cam", tmp_path / "m.onnx", tmp_path / "x.png", "--out", tmp_path / "out", "--save-npy", *flags]
    result = camcaffe(*args, "--preset", "torchvision", "--resize", "crop")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "out" / "x_cam.npy").shape[-2:] == (16, 16)
    assert "--score" not in flags or "GRADCAM" in result.stderr
