"""`camcaffe export-cam` and `convert --with-cam` as a user meets them, and `cam` on a --with-cam model giving
the results.csv of the plain model (real SqueezeNet, the demo photos)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from camcaffe.convert.random_model import write_random_caffemodel
from tests.cli.test_cli import TINY, assert_one_line_error, camcaffe
from tests.helpers import net_text, shared_path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
PREPROCESS = ["--mean", "104,117,123", "--raw-scale", "255", "--channel-swap", "2,1,0"]
NO_HEAD = net_text(
    (1, 3, 8, 8),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 4 kernel_size: 3 } }
""",
)


def _write(tmp_path: Path, text: str) -> tuple[Path, Path]:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(text)
    caffemodel = tmp_path / "net.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=4)
    return prototxt, caffemodel


def _cam_outputs(path: Path) -> dict:
    model = onnx.load(path)
    return json.loads({p.key: p.value for p in model.metadata_props}["camcaffe.cam_outputs"])


def test_export_cam_and_convert_with_cam_write_the_same_outputs(tmp_path):
    prototxt, caffemodel = _write(tmp_path, TINY)
    plain, exported, converted = (
        tmp_path / "plain.onnx",
        tmp_path / "exported.onnx",
        tmp_path / "converted.onnx",
    )
    assert camcaffe("convert", prototxt, caffemodel, "-o", plain).returncode == 0
    result = camcaffe("export-cam", plain, "-o", exported, "--top-k", "2", "--cam-class")
    assert result.returncode == 0, result.stderr
    assert "cam_top_classes" in result.stderr and "cam_class_maps" in result.stderr
    result = camcaffe("convert", prototxt, caffemodel, "-o", converted, "--with-cam", "2", "--cam-class")
    assert result.returncode == 0, result.stderr
    assert _cam_outputs(exported) == _cam_outputs(converted)
    assert [o.name for o in onnx.load(exported).graph.output] == [
        o.name for o in onnx.load(converted).graph.output
    ]
    shown = camcaffe("inspect", converted).stdout
    assert "in-graph CAM (top 2): cam_top_classes [batch, 2]" in shown and "class input cam_class" in shown
    described = json.loads(camcaffe("inspect", converted, "--json").stdout)["cam_outputs"]
    assert (
        described["outputs"]["cam_maps"] == ["batch", 2, 16, 16] and described["class_input"] == "cam_class"
    )
    assert "in-graph CAM" not in camcaffe("inspect", plain).stdout
    result = camcaffe(
        "export-cam", plain, "-o", tmp_path / "small.onnx", "--top-k", "1", "--no-cam-resize", "-q"
    )
    assert result.returncode == 0 and not result.stderr
    assert _cam_outputs(tmp_path / "small.onnx")["maps_resized"] is None


def test_refusals_are_one_line(tmp_path):
    prototxt, caffemodel = _write(tmp_path, NO_HEAD)
    out = tmp_path / "m.onnx"
    result = camcaffe("convert", prototxt, caffemodel, "-o", out, "--with-cam", "1")
    assert_one_line_error(result, "--with-cam", "no CAM head found", "removed")
    assert not out.exists()
    assert camcaffe("convert", prototxt, caffemodel, "-o", out).returncode == 0
    assert_one_line_error(
        camcaffe("export-cam", out, "-o", tmp_path / "c.onnx", "--top-k", "1"), "no CAM head found"
    )
    assert_one_line_error(
        camcaffe("convert", prototxt, caffemodel, "-o", out, "--cam-class"), "go with --with-cam"
    )
    assert_one_line_error(
        camcaffe("convert", prototxt, caffemodel, "-o", out, "--with-cam", "0"), "1 or more"
    )
    tiny, tiny_weights = _write(tmp_path, TINY)
    assert camcaffe("convert", tiny, tiny_weights, "-o", out).returncode == 0
    assert_one_line_error(camcaffe("export-cam", out, "-o", tmp_path / "c.onnx", "--top-k", "9"), "--top-k 9")
    assert_one_line_error(
        camcaffe("export-cam", tmp_path / "nope.onnx", "-o", out, "--top-k", "1"), "not found"
    )


def _same_results(
    tmp_path: Path,
    prototxt: Path,
    weights: Path,
    labels: Path,
    images: Path,
    *cam_args: str,
    convert_args: tuple[str, ...] | list[str] = (),
) -> None:
    """`cam` on the plain model and on its --with-cam twin: the same results.csv, byte for byte (paths aside)."""
    tables = []
    for name, extra in (("plain", []), ("with_cam", ["--with-cam", "5", "--cam-class"])):
        model = tmp_path / f"{name}.onnx"
        result = camcaffe(
            "convert", prototxt, weights, "-o", model, *PREPROCESS, "--labels", labels, *convert_args, *extra
        )
        assert result.returncode == 0, result.stderr
        out = tmp_path / f"out_{name}"
        result = camcaffe("cam", model, images, "--out", out, "--provider", "cpu", *cam_args)
        assert result.returncode == 0, result.stderr
        tables.append((out / "results.csv").read_text().replace(str(out), "OUT"))
    assert tables[0] == tables[1]
    assert tables[0].count("\n") > 5


@pytest.mark.parametrize(
    "cam_args", [["--top-k", "3"], ["--top-k", "2", "--class", "281"]], ids=["top3", "named"]
)
def test_cam_on_a_with_cam_model_gives_the_same_results_csv_demo_squeezenet(tmp_path, cam_args):
    _same_results(
        tmp_path,
        DEMO / "squeezenet_v1.0.prototxt",
        DEMO / "squeezenet_v1.0.caffemodel",
        DEMO / "synset_words.txt",
        DEMO / "images",
        *cam_args,
    )


def test_cam_on_a_with_cam_model_gives_the_same_results_csv_real_squeezenet(tmp_path):
    folder = shared_path("data", "models", "squeezenet_v1.0")
    _same_results(
        tmp_path,
        folder / "deploy.prototxt",
        folder / "weights.caffemodel",
        DEMO / "synset_words.txt",
        DEMO / "images",
        "--top-k",
        "5",
    )


def test_cam_on_a_with_cam_model_gives_the_same_results_csv_googlenet_cam_fixed_batch(tmp_path):
    """A gap_linear head (the maps are a MatMul in the graph, a BLAS product in numpy) and a fixed batch of 1."""
    folder = shared_path("golden", "googlenet_cam")
    _same_results(
        tmp_path,
        folder / "deploy.prototxt",
        folder / "weights.caffemodel",
        DEMO / "synset_words.txt",
        DEMO / "images",
        "--top-k",
        "5",
        "--class",
        "281",
        convert_args=["--batch", "1"],
    )


def test_export_cam_of_a_channels_last_model_and_an_opset_it_cannot_write_for(tmp_path):
    from tests.explain.test_cam_export import channels_last_model

    plain = channels_last_model(tmp_path / "m.onnx", 20, size=(6, 8))
    out = tmp_path / "c.onnx"
    result = camcaffe("export-cam", plain, "-o", out, "--top-k", "2", "--layout", "nhwc")
    assert result.returncode == 0, result.stderr
    recorded = _cam_outputs(out)
    assert recorded["feature_layout"] == recorded["input_layout"] == "nhwc"
    shown = json.loads(camcaffe("inspect", out, "--json").stdout)["cam_outputs"]["outputs"]
    assert shown["cam_maps_resized"] == ["batch", 2, 6, 8]
    old = onnx.load(plain)
    old.opset_import[0].version = 10
    onnx.save(old, tmp_path / "old.onnx")
    assert_one_line_error(
        camcaffe("export-cam", tmp_path / "old.onnx", "-o", tmp_path / "x.onnx", "--top-k", "1"),
        "default-domain opset 10",
        "opsets 11 to 28",
    )
    assert not (tmp_path / "x.onnx").exists()
