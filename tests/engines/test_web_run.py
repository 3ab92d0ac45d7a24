"""`camcaffe web`: what the command checks and settles before the site is written (refusals in one line,
nothing written on failure, the page's settings as `camcaffe cam` would use them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from camcaffe.convert.api import Preprocessing, convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.engines.web_run import WebOptions, build_site
from camcaffe.errors import CamcaffeError, InputFileError
from camcaffe.explain.cam_export import export_cam_file
from camcaffe.output import web_vendor
from tests.cli.test_cli import assert_one_line_error, camcaffe
from tests.engines.test_model_inputs import SEGMENTATION
from tests.helpers import net_text

CLASSIFIER = net_text(
    (1, 3, 24, 20),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)
NO_HEAD = net_text(
    (1, 3, 8, 8),
    """
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)
LABELS = ["ant", "bee <b>", "cat", "dog"]


def convert(
    tmp_path: Path, text: str, preprocessing: Preprocessing | None = None, labels: bool = True
) -> Path:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(text)
    weights = tmp_path / "net.caffemodel"
    write_random_caffemodel(prototxt, weights, seed=2)
    label_file = None
    if labels:
        label_file = tmp_path / "labels.txt"
        label_file.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "net.onnx"
    convert_files(
        prototxt, weights, out, ConvertOptions(), preprocessing=preprocessing, labels_path=label_file
    )
    return out


@pytest.fixture
def vendor(tmp_path) -> Path:
    """Stand-ins for onnxruntime-web's files: the command copies them, it never runs them."""
    folder = tmp_path / "ort-web"
    folder.mkdir()
    for name in web_vendor.files_needed(webgpu=True):
        (folder / name).write_bytes(f"// {name}\n".encode())
    return folder


@pytest.fixture
def model(tmp_path) -> Path:
    return convert(
        tmp_path,
        CLASSIFIER,
        Preprocessing(mean=[104.0, 117.0, 123.0], raw_scale=255.0, channel_swap=[2, 1, 0]),
    )


def config_of(site: Path) -> dict:
    return json.loads((site / "config.json").read_text(encoding="utf-8"))


def test_the_page_gets_the_models_preprocessing_labels_and_cam_outputs(tmp_path, model, vendor):
    site = build_site(WebOptions(model=model, out=tmp_path / "site", ort_web=vendor, top_k=3, quiet=True))
    config = config_of(site)
    assert config["input"] == {"name": "data", "layout": "nchw", "shape": [1, 3, 24, 20]}
    assert config["preprocess"] == {
        "resize": "warp",
        "resize_filter": "caffe",
        "crop_base": 256,
        "channel_swap": [2, 1, 0],
        "raw_scale": 255.0,
        "mean": [104.0, 117.0, 123.0],
        "std": None,
        "input_scale": None,
        "assumed": False,
    }
    assert config["labels"] == LABELS and config["num_classes"] == 4 and config["top_k"] == 3
    assert config["outputs"]["class_input"] == "cam_class" and config["outputs"]["maps"] == "cam_maps"
    written = onnx.load(str(site / "model.onnx"))
    outputs = {o.name for o in written.graph.output}
    assert {"cam_top_classes", "cam_top_probabilities", "cam_maps", "cam_class_maps"} <= outputs
    assert "cam_maps_resized" not in outputs  # the page resizes the raw maps over the photo itself
    # onnxruntime-web takes no feed for an input that is also an initializer: cam_class must be a plain input.
    assert "cam_class" in {i.name for i in written.graph.input}
    assert "cam_class" not in {t.name for t in written.graph.initializer}


def test_the_page_maps_the_same_classes_as_the_python_session(tmp_path, model, vendor):
    import onnxruntime as ort

    site = build_site(WebOptions(model=model, out=tmp_path / "site", ort_web=vendor, top_k=4, quiet=True))
    session = ort.InferenceSession(str(site / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 50, (1, 3, 24, 20)).astype(np.float32)
    top, probs, maps, class_maps = session.run(
        ["cam_top_classes", "cam_top_probabilities", "cam_maps", "cam_class_maps"],
        {"data": x, "cam_class": np.array([[2]], np.int64)},
    )
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    prob = plain.run(["prob"], {"data": x})[0][0]
    assert top[0].tolist() == np.argsort(-prob, kind="stable")[:4].tolist()
    np.testing.assert_allclose(probs[0], np.sort(prob)[::-1][:4], rtol=1e-6)
    position = top[0].tolist().index(2)
    scale = np.abs(maps[0, position]).max()
    np.testing.assert_allclose(class_maps[0, 0], maps[0, position], rtol=0, atol=1e-6 * scale)


def test_presets_and_flags_settle_as_for_camcaffe_cam(tmp_path, model, vendor):
    site = build_site(
        WebOptions(model=model, out=tmp_path / "tv", ort_web=vendor, preset="torchvision", quiet=True)
    )
    tv = config_of(site)["preprocess"]
    assert tv["resize"] == "torchvision" and tv["resize_filter"] == "pil-bilinear"
    assert tv["raw_scale"] == 1.0 and tv["channel_swap"] == [0, 1, 2]
    np.testing.assert_allclose(tv["mean"], [0.485, 0.456, 0.406], rtol=1e-6)
    np.testing.assert_allclose(tv["std"], [0.229, 0.224, 0.225], rtol=1e-6)
    site = build_site(
        WebOptions(model=model, out=tmp_path / "vgg", ort_web=vendor, preset="keras-vgg", quiet=True)
    )
    vgg = config_of(site)["preprocess"]
    assert vgg["resize"] == "warp" and vgg["resize_filter"] == "pil-nearest" and vgg["std"] is None
    np.testing.assert_allclose(vgg["mean"], [103.939, 116.779, 123.68], rtol=1e-6)
    site = build_site(
        WebOptions(
            model=model,
            out=tmp_path / "bicubic",
            ort_web=vendor,
            preset="torchvision",
            resize_filter="pil-bicubic",
            quiet=True,
        )
    )
    assert config_of(site)["preprocess"]["resize_filter"] == "pil-bicubic"  # the flag wins over the preset
    site = build_site(
        WebOptions(
            model=model, out=tmp_path / "flags", ort_web=vendor, raw_scale=1.0, input_scale=0.5, quiet=True
        )
    )
    flags = config_of(site)["preprocess"]
    assert (
        flags["raw_scale"] == 1.0 and flags["input_scale"] == 0.5 and flags["mean"] == [104.0, 117.0, 123.0]
    )


@pytest.fixture
def keras_vgg_model(tmp_path, model) -> Path:
    """The classifier with `camcaffe meta --preset keras-vgg` written into its metadata."""
    from camcaffe.cli.main import main

    assert main(["-q", "meta", str(model), "--preset", "keras-vgg"]) == 0
    return model


def test_a_model_annotated_by_meta_preset_is_honoured_without_flags(tmp_path, keras_vgg_model, vendor):
    site = build_site(WebOptions(model=keras_vgg_model, out=tmp_path / "a", ort_web=vendor, quiet=True))
    page = config_of(site)["preprocess"]
    assert page["resize"] == "warp" and page["resize_filter"] == "pil-nearest" and not page["assumed"]
    np.testing.assert_allclose(page["mean"], [103.939, 116.779, 123.68], rtol=1e-6)
    # Another --resize leaves the recorded filter behind (it was chosen for warp), as camcaffe cam does.
    site = build_site(
        WebOptions(model=keras_vgg_model, out=tmp_path / "b", ort_web=vendor, resize="crop", quiet=True)
    )
    assert config_of(site)["preprocess"]["resize_filter"] == "caffe"


SETTLEMENTS = [
    {},
    {"resize": "crop"},
    {"resize": "torchvision"},
    {"preset": "torchvision"},
    {"preset": "keras-tf", "resize_filter": "pil-lanczos"},
    {"preset": "caffe", "std": [2.0, 2.0, 2.0]},
    {"resize_filter": "pil-box", "mean": [1.0, 2.0, 3.0], "input_scale": 0.25},
    {"resize": "crop", "resize_filter": "pil-hamming", "channel_swap": [1, 0, 2]},
]


@pytest.mark.parametrize("annotated", [False, True], ids=["convert-metadata", "meta-keras-vgg"])
@pytest.mark.parametrize(
    "flags", SETTLEMENTS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "none"
)
def test_the_page_settles_every_setting_as_the_cam_pipeline_does(tmp_path, model, vendor, flags, annotated):
    from camcaffe.cli.main import main
    from camcaffe.engines.cam_run import CamOptions, build_job

    if annotated:
        assert main(["-q", "meta", str(model), "--preset", "keras-vgg"]) == 0
    photo = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(photo), np.zeros((30, 30, 3), np.uint8))
    job, session, _, assumed = build_job(
        CamOptions(model, [str(photo)], tmp_path / "cam", quiet=True, **flags)
    )
    pipeline = job.make_pipeline(session)
    site = build_site(WebOptions(model=model, out=tmp_path / "site", ort_web=vendor, quiet=True, **flags))
    page = config_of(site)["preprocess"]
    transformer, name = pipeline.transformer, pipeline.input_name
    assert (page["resize"], page["resize_filter"]) == (pipeline.views.name, pipeline.views.resize_filter)
    assert page["channel_swap"] == list(transformer.channel_swap.get(name, (0, 1, 2)))
    assert page["raw_scale"] == transformer.raw_scale.get(name)
    assert page["input_scale"] == transformer.input_scale.get(name)
    assert page["mean"] == np.asarray(transformer.mean[name], np.float32).reshape(-1).tolist()
    std = transformer.std.get(name)
    assert page["std"] == (None if std is None else std.reshape(-1).tolist())
    assert page["assumed"] is assumed


def test_every_resize_filter_of_camcaffe_cam_is_one_the_page_reproduces(tmp_path, model, vendor, monkeypatch):
    from camcaffe.engines import web_run
    from camcaffe.runtime.presets import RESIZE_FILTERS

    assert set(web_run.PAGE_FILTERS) == set(RESIZE_FILTERS)
    # A filter added to camcaffe cam before the page learns it is refused, not approximated.
    monkeypatch.setattr(web_run, "PAGE_FILTERS", ("caffe", "pil-bilinear"))
    with pytest.raises(
        CamcaffeError, match="--resize-filter pil-lanczos: the page reproduces caffe, pil-bilinear"
    ):
        build_site(
            WebOptions(
                model=model, out=tmp_path / "site", ort_web=vendor, resize_filter="pil-lanczos", quiet=True
            )
        )
    assert not (tmp_path / "site").exists()


def test_a_mean_image_goes_to_mean_bin_at_the_input_size(tmp_path, vendor):
    mean = np.random.default_rng(1).uniform(90, 130, (3, 30, 26)).astype(np.float32)
    model = convert(
        tmp_path, CLASSIFIER, Preprocessing(mean_image=mean, raw_scale=255.0, channel_swap=[2, 1, 0])
    )
    site = build_site(WebOptions(model=model, out=tmp_path / "site", ort_web=vendor, quiet=True))
    config = config_of(site)
    assert (
        config["mean_image"] == {"file": "mean.bin", "shape": [3, 24, 20]}
        and config["preprocess"]["mean"] is None
    )
    from camcaffe.runtime.preprocess import Transformer

    transformer = Transformer({"data": (1, 3, 24, 20)})
    transformer.set_mean("data", mean)
    written = np.fromfile(site / "mean.bin", dtype="<f4").reshape(3, 24, 20)
    np.testing.assert_array_equal(written, transformer.mean["data"])


def test_a_model_without_preprocessing_gets_the_imagenet_defaults_as_in_cam(tmp_path, vendor):
    model = convert(tmp_path, CLASSIFIER, labels=False)
    site = build_site(WebOptions(model=model, out=tmp_path / "site", ort_web=vendor, quiet=True))
    config = config_of(site)
    assert config["preprocess"]["assumed"] is True and config["preprocess"]["mean"] == [104.0, 117.0, 123.0]
    assert config["labels"] == [f"class_{i}" for i in range(4)]


def test_a_segmentation_net_is_refused_in_one_line_and_nothing_is_written(tmp_path, vendor):
    (tmp_path / "seg.prototxt").write_text(SEGMENTATION)
    assert (
        camcaffe(
            "convert", tmp_path / "seg.prototxt", "-o", tmp_path / "seg.onnx", "--random-weights", "1"
        ).returncode
        == 0
    )
    result = camcaffe("web", tmp_path / "seg.onnx", "-o", tmp_path / "site", "--ort-web", vendor)
    assert_one_line_error(result, "not an image classifier", "segmentation or detection")
    assert not (tmp_path / "site").exists()


def test_a_net_without_a_cam_head_is_refused_in_one_line(tmp_path, vendor):
    model = convert(tmp_path, NO_HEAD)
    result = camcaffe("web", model, "-o", tmp_path / "site", "--ort-web", vendor)
    assert_one_line_error(result, "CAM")
    assert not (tmp_path / "site").exists()


def test_missing_runtime_files_are_refused_with_the_way_to_get_them(tmp_path, model):
    result = camcaffe("web", model, "-o", tmp_path / "site", "--ort-web", tmp_path / "nowhere")
    assert_one_line_error(result, "onnxruntime-web 1.30.0", "make web", "--fetch")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "9"], "between 1 and 4"),
        (["--alpha", "2"], "--alpha"),
        (["--resize", "crop", "--input-size", "300,300"], "fixed at 24x20"),
        (["--channel-swap", "0,1"], "channel swap"),
        (["--std", "0,1,1"], "std"),
        (["--resize", "torchvision", "--resize-filter", "caffe"], "pil-*"),
    ],
)
def test_bad_flags_are_refused_in_one_line(tmp_path, model, vendor, flags, needle):
    result = camcaffe("web", model, "-o", tmp_path / "site", "--ort-web", vendor, *flags)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "site").exists()


def test_a_with_cam_model_is_used_when_it_has_the_class_input(tmp_path, model, vendor):
    with_class = tmp_path / "with_class.onnx"
    export_cam_file(model, with_class, 2, class_input=True)
    site = build_site(WebOptions(model=with_class, out=tmp_path / "a", ort_web=vendor, top_k=2, quiet=True))
    assert "cam_class" not in {t.name for t in onnx.load(str(site / "model.onnx")).graph.initializer}
    with pytest.raises(CamcaffeError, match="top 2 classes"):
        build_site(WebOptions(model=with_class, out=tmp_path / "b", ort_web=vendor, top_k=3, quiet=True))
    without = tmp_path / "without.onnx"
    export_cam_file(model, without, 2)
    with pytest.raises(CamcaffeError, match="without the cam_class input"):
        build_site(WebOptions(model=without, out=tmp_path / "c", ort_web=vendor, top_k=2, quiet=True))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_variable_input_size_needs_input_size(tmp_path, vendor):
    from tests.engines.test_model_inputs import _cam_model

    model = _cam_model(tmp_path / "var.onnx", ["n", 3, "h", "w"])
    with pytest.raises(CamcaffeError, match="--input-size"):
        build_site(WebOptions(model=model, out=tmp_path / "a", ort_web=vendor, top_k=2, quiet=True))
    site = build_site(
        WebOptions(model=model, out=tmp_path / "b", ort_web=vendor, top_k=2, input_size=[40, 30], quiet=True)
    )
    assert config_of(site)["input"]["shape"] == [1, 3, 40, 30]


def test_a_variable_input_size_takes_the_size_camcaffe_cam_would(tmp_path, vendor):
    """The metadata's input_size (camcaffe meta --input-size) and the torchvision preset's 224 crop settle a
    variable size as they do for camcaffe cam; --input-size still wins."""
    from camcaffe.convert.meta import metadata_changes, update_metadata
    from tests.engines.test_model_inputs import _cam_model

    model = _cam_model(tmp_path / "var.onnx", ["n", 3, "h", "w"])
    update_metadata(model, metadata_changes(model, input_size=[36, 28]))
    site = build_site(WebOptions(model=model, out=tmp_path / "a", ort_web=vendor, top_k=2, quiet=True))
    assert config_of(site)["input"]["shape"] == [1, 3, 36, 28]
    site = build_site(
        WebOptions(model=model, out=tmp_path / "b", ort_web=vendor, top_k=2, input_size=[40, 30], quiet=True)
    )
    assert config_of(site)["input"]["shape"] == [1, 3, 40, 30]
    plain = _cam_model(tmp_path / "plain.onnx", ["n", 3, "h", "w"])
    site = build_site(
        WebOptions(model=plain, out=tmp_path / "c", ort_web=vendor, top_k=2, preset="torchvision", quiet=True)
    )
    assert config_of(site)["input"]["shape"] == [1, 3, 224, 224]


def test_the_cli_prints_how_to_serve_the_site(tmp_path, model, vendor):
    result = camcaffe("web", model, "-o", tmp_path / "site", "--ort-web", vendor, "--no-webgpu")
    assert result.returncode == 0, result.stderr
    assert "python3 -m http.server" in result.stderr
    assert sorted(p.name for p in (tmp_path / "site" / "ort").iterdir()) == sorted(web_vendor.WASM_FILES)


def test_a_vendor_folder_of_another_version_is_refused(tmp_path, model, vendor):
    (vendor / "VERSION.json").write_text(json.dumps({"version": "1.17.0"}))
    with pytest.raises(InputFileError, match="holds onnxruntime-web 1.17.0"):
        build_site(WebOptions(model=model, out=tmp_path / "site", ort_web=vendor, quiet=True))


def test_an_ir_version_onnxruntime_web_cannot_read_is_refused(tmp_path, model, vendor):
    newer = onnx.load(str(model))
    newer.ir_version = web_vendor.MAX_IR_VERSION + 1
    onnx.save(newer, str(tmp_path / "newer.onnx"))
    with pytest.raises(CamcaffeError, match=f"IR version {web_vendor.MAX_IR_VERSION + 1}"):
        build_site(
            WebOptions(model=tmp_path / "newer.onnx", out=tmp_path / "site", ort_web=vendor, quiet=True)
        )
    assert not (tmp_path / "site").exists()
