"""The presets against the frameworks' own preprocessing on the demo photos, and `camcaffe cam` on a model exported
from Keras as its CAM tutorials preprocess: `--preset keras-vgg`, then the same preset written by `camcaffe meta`
and no flag at all, against the CAM and Grad-CAM that Keras computes on its own input."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from camcaffe.engines.cam_run import CamOptions, apply_preset, run_cam
from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess
from camcaffe.runtime.session import ModelSession

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "examples" / "demo" / "images").glob("*.*g"))
RELATIVE = 1e-4


def _nhwc_model(path: Path, size: int) -> Path:
    """A channels-last classifier taking (1, size, size, 3), as Keras exports one (only its input matters here)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "kernel"),
        numpy_helper.from_array(np.asarray([1, 2], np.int64), "hw"),
        numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "dense"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "kernel"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["nhwc", "hw"], ["gap"], keepdims=0),
        helper.make_node("MatMul", ["gap", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, size, size, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _preset_pipeline(model: Path, preset: str, tmp_path: Path) -> CamPipeline:
    options = apply_preset(CamOptions(model, [], tmp_path, preset=preset))
    preprocess = Preprocess(
        options.mean, None, options.raw_scale, options.channel_swap, options.input_scale, options.std
    )
    settings = CamSettings(resize=options.resize, resize_filter=options.resize_filter)
    return CamPipeline(ModelSession(model, "cpu"), preprocess, settings)


def _keras():
    pytest.importorskip("torch", reason="Keras 3 runs here on its torch backend, which needs torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the Keras preset tests need keras 3")
    pytest.importorskip("PIL.Image", reason="keras.utils.load_img needs Pillow")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()} backend; these tests use torch")
    return keras


# preset -> (the Keras application whose preprocess_input it reproduces, the tutorials' input size)
KERAS_PRESETS = {
    "keras-vgg": ("vgg16", 224),
    "keras-tf": ("mobilenet_v2", 224),
    "inception": ("inception_v3", 299),
    "keras-torch": ("densenet", 224),
}


def _keras_input(keras, photo: Path, application: str, size: int) -> np.ndarray:
    """What the Keras tutorials feed: load_img(path, target_size) -> img_to_array -> preprocess_input."""
    module = getattr(keras.applications, application)
    array = keras.utils.img_to_array(keras.utils.load_img(photo, target_size=(size, size)))
    return np.asarray(module.preprocess_input(array[np.newaxis]))


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(KERAS_PRESETS))
def test_keras_presets_reproduce_load_img_and_preprocess_input(preset, tmp_path):
    keras = _keras()
    application, size = KERAS_PRESETS[preset]
    pipeline = _preset_pipeline(_nhwc_model(tmp_path / "m.onnx", size), preset, tmp_path)
    assert pipeline.layout == "nhwc"
    for photo in PHOTOS:
        _, inputs = pipeline.load(photo)
        ours = inputs.transpose(0, 2, 3, 1)  # the pipeline's inputs are N, C, H, W; Keras's channels-last
        theirs = _keras_input(keras, photo, application, size)
        assert ours.shape == theirs.shape == (1, size, size, 3)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=f"{preset} {photo.name}")
        if preset == "keras-vgg":  # 0..255 pixels minus the mean: the same float32 operations, bit for bit
            np.testing.assert_array_equal(ours, theirs, err_msg=photo.name)


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_torchvision_resize_with_another_pillow_filter(photo, tmp_path):
    """torchvision's Resize(256, interpolation=BICUBIC) + CenterCrop(224), as timm-style recipes use, done with
    Pillow: --preset torchvision --resize-filter pil-bicubic."""
    image = pytest.importorskip("PIL.Image", reason="the reference preprocessing is Pillow's")
    options = apply_preset(
        CamOptions(tmp_path / "m.onnx", [], tmp_path, preset="torchvision", resize_filter="pil-bicubic")
    )
    model = _nhwc_model(tmp_path / "m.onnx", 224)
    preprocess = Preprocess(options.mean, None, options.raw_scale, options.channel_swap, None, options.std)
    settings = CamSettings(resize=options.resize, resize_filter=options.resize_filter)
    _, inputs = CamPipeline(ModelSession(model, "cpu"), preprocess, settings).load(photo)
    picture = image.open(photo).convert("RGB")
    width, height = picture.size
    short, long = min(width, height), max(width, height)
    size = (256, int(256 * long / short)) if width <= height else (int(256 * long / short), 256)
    resized = picture.resize(size, image.Resampling.BICUBIC)
    left, top = int(round((resized.size[0] - 224) / 2.0)), int(round((resized.size[1] - 224) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / np.float32(255)
    reference = (crop - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    np.testing.assert_allclose(inputs[0].transpose(1, 2, 0), reference, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------ cam on a Keras model, end to end


@pytest.fixture(scope="module")
def keras_vgg(tmp_path_factory):
    """A small VGG16-style Keras 3 net at VGG16's 224x224 input (block convolutions, global average pooling,
    Dense softmax: the CAM tutorials' head), exported with model.export(format='onnx') on the torch backend."""
    keras = _keras()
    pytest.importorskip("onnxscript", reason="Keras's ONNX export on the torch backend needs onnxscript")
    layers = keras.layers
    keras.utils.set_random_seed(0)
    image = keras.Input((224, 224, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="block1_conv1")(image)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block4_conv1")(x)
    x = layers.MaxPooling2D(name="block4_pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv3")(x)
    pooled = layers.GlobalAveragePooling2D(name="gap")(x)
    predictions = layers.Dense(4, activation="softmax", name="predictions")(pooled)
    model = keras.Model(image, predictions)
    # A "trained" Dense layer: class c points at the pooled features of photo c, so that the photos' top-1
    # classes differ (a top-1 check that can fail) while the softmax stays unsaturated.
    pooled = keras.Model(image, pooled)(
        np.concatenate([_keras_input(keras, p, "vgg16", 224) for p in PHOTOS[:4]])
    )
    pooled = np.asarray(pooled.detach().cpu())
    directions = (pooled - pooled.mean(axis=0)).T
    dense = model.get_layer("predictions")
    kernel = directions * (3.0 / np.abs((pooled - pooled.mean(axis=0)) @ directions).max())
    dense.set_weights([kernel, -pooled.mean(axis=0) @ kernel])
    model(np.zeros((1, 224, 224, 3), np.float32))  # Keras exports only a model that was called
    folder = tmp_path_factory.mktemp("keras_vgg")
    path = folder / "vgg.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx")
    return keras, model, path


def _keras_maps(keras, model, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, CAM of the top class, probability-scored Grad-CAM of the top class) as the Keras tutorials
    compute them: CAM = block5_conv3 features . Dense kernel[:, c]; Grad-CAM (Deep Learning with Python) = mean
    over channels of the features weighted by the mean gradient of the class probability, ReLU, / max."""
    import torch

    grad_model = keras.Model(model.input, [model.get_layer("block5_conv3").output, model.output])
    features, probabilities = grad_model(torch.from_numpy(np.ascontiguousarray(inputs)))
    top = int(probabilities[0].argmax())
    (grads,) = torch.autograd.grad(probabilities[:, top].sum(), features)
    kernel = model.get_layer("predictions").get_weights()[0]
    conv = features[0].detach().cpu().numpy()
    cam = conv @ kernel[:, top]
    heat = np.maximum((conv * grads.mean(dim=(0, 1, 2)).cpu().numpy()).mean(axis=-1), 0)
    return probabilities.detach().cpu().numpy()[0], cam, heat / heat.max() if heat.max() > 0 else heat


def _run(model: Path, out: Path, **flags) -> tuple[dict, dict]:
    options = CamOptions(
        model, [str(p) for p in PHOTOS], out, save_npy=True, quiet=True, no_overlays=True, **flags
    )
    assert run_cam(options) == 0
    import csv

    with open(out / "results.csv") as handle:
        top1 = {Path(row["image"]).name: int(row["class_index"]) for row in csv.DictReader(handle)}
    maps = {p.name: np.load(out / f"{p.stem}_cam.npy") for p in PHOTOS}
    return top1, maps


@pytest.mark.slow
def test_cam_on_a_keras_export_with_the_preset_and_with_meta(keras_vgg, tmp_path):
    keras, model, path = keras_vgg
    expected = {p.name: _keras_maps(keras, model, _keras_input(keras, p, "vgg16", 224)) for p in PHOTOS}
    top1, maps = _run(path, tmp_path / "preset", preset="keras-vgg")
    assert len({int(e[0].argmax()) for e in expected.values()}) >= 3  # the photos' top-1 classes differ
    for name, (probabilities, cam, _) in expected.items():
        assert top1[name] == int(probabilities.argmax()), name
        error = np.abs(maps[name][0] - cam).max() / np.abs(cam).max()
        assert error <= RELATIVE, f"{name}: relative error {error:.3g}"

    from camcaffe.convert.meta import metadata_changes, update_metadata

    annotated = tmp_path / "annotated.onnx"
    shutil.copy(path, annotated)
    update_metadata(annotated, metadata_changes(annotated, "keras-vgg"))
    top1_meta, maps_meta = _run(annotated, tmp_path / "meta")
    assert top1_meta == top1
    for name in maps:
        np.testing.assert_array_equal(maps_meta[name], maps[name])
    settings = json.loads((tmp_path / "meta" / "cam_settings.json").read_text())
    assert settings["resize_filter"] == "pil-nearest" and settings["preprocess"]["mean"][0] == 103.939

    _, gradcams = _run(annotated, tmp_path / "gradcam", method="gradcam", score="prob")
    for name, (_, _, heat) in expected.items():
        peak = gradcams[name][0].max()  # 0 where every weighted channel sum is negative (ReLU): Keras's too
        ours = gradcams[name][0] / peak if peak > 0 else gradcams[name][0]
        error = np.abs(ours - heat).max()
        assert error <= RELATIVE, f"{name}: Grad-CAM relative error {error:.3g}"


@pytest.mark.slow
def test_the_caffe_resize_is_not_keras_preprocessing(keras_vgg, tmp_path):
    """The same numbers with caffe.io's resize instead of load_img's nearest: a different net input (the test
    above can fail)."""
    keras, _, path = keras_vgg
    pipeline = _preset_pipeline(path, "keras-vgg", tmp_path)
    pipeline.views = type(pipeline.views)(pipeline.input_hw, resize_filter="caffe")
    _, inputs = pipeline.load(PHOTOS[0])
    theirs = _keras_input(keras, PHOTOS[0], "vgg16", 224)
    assert np.abs(inputs.transpose(0, 2, 3, 1) - theirs).max() > 1.0


def test_a_preset_replaces_the_models_stored_preprocessing(tmp_path):
    """A model annotated for torchvision (std in its metadata) run with --preset keras-vgg: no std is left over
    from the metadata, and without --preset the metadata's recipe applies."""
    from camcaffe.convert.meta import metadata_changes, update_metadata
    from camcaffe.engines.cam_run import build_job

    model = _nhwc_model(tmp_path / "m.onnx", 224)
    update_metadata(model, metadata_changes(model, "torchvision"))
    photos = [str(PHOTOS[0])]
    job, *_ = build_job(CamOptions(model, photos, tmp_path / "a", preset="keras-vgg", workers=1))
    assert job.preprocess.std is None and job.preprocess.mean == [103.939, 116.779, 123.68]
    assert (job.settings.resize, job.settings.resize_filter) == ("warp", "pil-nearest")
    job, *_ = build_job(CamOptions(model, photos, tmp_path / "b", workers=1))
    assert job.preprocess.std == [0.229, 0.224, 0.225] and job.preprocess.raw_scale == 1.0
    assert (job.settings.resize, job.settings.resize_filter) == ("torchvision", "pil-bilinear")
    job, *_ = build_job(CamOptions(model, photos, tmp_path / "c", resize="crop", workers=1))
    assert (job.settings.resize, job.settings.resize_filter) == (
        "crop",
        None,
    )  # the stored filter was torchvision's
