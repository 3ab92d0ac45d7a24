"""export-cam on models exported from PyTorch (torch.onnx.export legacy at opsets 17, 18 and 20, dynamo; fixed and
variable input sizes) and Keras 3 (channels-last and channels-first), as tests/engines/test_pipeline_frameworks.py
builds them: the written model passes onnx's full checker at the model's own opset and runs in onnxruntime, its
in-graph maps equal the pipeline's within 1e-5 relative (and the framework's own CAM), its resized maps take the
run-time input size, and `camcaffe cam` on it writes the plain model's results.csv byte for byte (paths aside)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from camcaffe.cli.main import main
from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess
from camcaffe.explain.cam import normalize, upsample
from camcaffe.explain.cam_export import default_opset, export_cam_file
from camcaffe.explain.methods.base import to_layout
from camcaffe.runtime.session import ModelSession
from tests.engines import test_pipeline_frameworks as frameworks
from tests.engines.test_pipeline_frameworks import (
    PHOTOS,
    TWO_SIZES,
    _export,
    _export_dynamic_size,
    _keras_feature_model,
    _relative_error,
    _torch_cam,
)

# The framework models' module-scoped fixtures, registered in this module by name.
torch_net = frameworks.torch_net
keras_export = frameworks.keras_export
keras_channels_first_export = frameworks.keras_channels_first_export
keras_variable_size_export = frameworks.keras_variable_size_export

pytestmark = pytest.mark.slow  # torch and Keras exports, several cam runs
IN_GRAPH = 1e-5  # in-graph maps against the pipeline's on the same model, and the framework's own CAM
TORCHVISION_FLAGS = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--raw-scale", "1"]
TORCHVISION_FLAGS += ["--channel-swap", "0,1,2"]


def _export_at_opset(torch_net, opset: int) -> Path:
    """The torch net by the legacy exporter at `opset` (dynamic batch), once."""
    torch, model, folder, _ = torch_net
    path = folder / f"legacy_opset{opset}.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.randn(1, 3, 224, 224),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
    return path


def _with_cam(plain: Path) -> Path:
    """export-cam (top 2, --cam-class) of `plain`, checked by onnx's full checker at the model's own opset."""
    exported = plain.with_name(f"{plain.stem}_cam.onnx")
    if not exported.exists():
        export_cam_file(plain, exported, 2, class_input=True)
    model = onnx.load(exported)
    assert default_opset(model) == default_opset(onnx.load(plain))
    onnx.checker.check_model(model, full_check=True)
    return exported


def _in_graph_maps(plain: Path, exported: Path, inputs: np.ndarray, named: list[int]) -> np.ndarray:
    """For N, C, H, W net inputs, one image at a time (the dynamo export fixes the batch at 1): the exported
    model's top-2 and their maps equal the pipeline's on the plain model within IN_GRAPH, its resized maps are
    normalize(upsample(maps)) at the input's own H x W; returns its maps of the `named` classes (N, M, h, w)."""
    pipeline = CamPipeline(ModelSession(plain, "cpu"), Preprocess(), CamSettings(top_k=2))
    session = ModelSession(exported, "cpu")
    names = ["cam_top_classes", "cam_maps", "cam_maps_resized", "cam_class_maps"]
    named_maps = []
    for image in inputs:
        batch = image[None]
        probabilities, features = pipeline.infer(batch)
        classes, _ = pipeline.select_classes(probabilities)
        reference = pipeline.maps(batch, features, probabilities, classes)
        feeds = {pipeline.input_name: to_layout(batch, pipeline.layout), "cam_class": np.array([named])}
        got = session.run(feeds, names)
        np.testing.assert_array_equal(got["cam_top_classes"], classes)
        assert got["cam_maps"].shape == reference.shape
        error = _relative_error(got["cam_maps"], reference)
        assert error <= IN_GRAPH, f"in-graph maps: relative error {error:.3g}"
        resized = got["cam_maps_resized"]
        assert resized.shape == (1, 2, *image.shape[1:])
        np.testing.assert_allclose(resized, normalize(upsample(reference, image.shape[1:])), atol=1e-5)
        named_maps.append(got["cam_class_maps"][0])
    return np.stack(named_maps)


def _same_results_csv(tmp_path: Path, plain: Path, exported: Path, photos: list[Path], *flags: str) -> str:
    """`camcaffe cam` on the plain and the exported model: the same results.csv, byte for byte (paths aside);
    the exported model is explained from its in-graph outputs."""
    fast = CamPipeline(ModelSession(exported, "cpu"), Preprocess(), CamSettings(top_k=2))
    assert fast.in_graph is not None
    tables = []
    for name, model in (("plain", plain), ("with_cam", exported)):
        out = tmp_path / f"out_{name}"
        args = ["-q", "cam", str(model), *map(str, photos), "--out", str(out), "--provider", "cpu"]
        assert main([*args, "--no-overlays", "--top-k", "2", *flags]) == 0
        tables.append((out / "results.csv").read_text().replace(str(out), "OUT"))
    assert tables[0] == tables[1]
    assert tables[0].count("\n") > len(photos)
    return tables[0]


# ------------------------------------------------------------------------------------------------- PyTorch

TORCH_MODELS = ["opset17", "opset18", "opset20", "dynamo"]


def _torch_model(torch_net, which: str) -> Path:
    return _export(torch_net, "dynamo") if which == "dynamo" else _export_at_opset(torch_net, int(which[5:]))


@pytest.mark.parametrize("which", TORCH_MODELS)
def test_torch_in_graph_maps_at_the_models_opset(torch_net, which):
    """Before: at opset 18 and later (torch's default legacy opset 20, dynamo) onnxruntime refused the written
    model: 'Unrecognized attribute: axes for operator ReduceMin'."""
    torch, model, _, inputs = torch_net
    plain = _torch_model(torch_net, which)
    opset = default_opset(onnx.load(plain))
    assert opset == (int(which[5:]) if which != "dynamo" else opset) and opset >= 17
    named = _in_graph_maps(plain, _with_cam(plain), inputs, [0, 1])
    for cls in (0, 1):
        error = _relative_error(named[:, cls], _torch_cam(torch, model, inputs, cls))
        assert error <= IN_GRAPH, f"{which} class {cls}: relative error {error:.3g} against torch"


@pytest.mark.parametrize(
    ("which", "flags"),
    [
        ("opset17", ["--preset", "torchvision"]),  # Pillow's bilinear resize + centre crop
        ("opset20", ["--preset", "torchvision", "--class", "1"]),
        ("dynamo", ["--preset", "torchvision"]),
    ],
)
def test_torch_cam_on_the_exported_model_writes_the_plain_models_results_csv(
    tmp_path, torch_net, which, flags
):
    plain = _torch_model(torch_net, which)
    _same_results_csv(tmp_path, plain, _with_cam(plain), PHOTOS, *flags)


@pytest.mark.parametrize("export", ["legacy", "dynamo"])
def test_torch_variable_size_maps_are_resized_to_each_inputs_own_size(tmp_path, torch_net, export):
    """Symbolic H, W: each photo goes in at its own size, the in-graph resize takes the run-time size."""
    torch, model, _, _ = torch_net
    plain = _export_dynamic_size(torch_net, export)
    exported = _with_cam(plain)
    rng = np.random.default_rng(3)
    for size in ((224, 224), (160, 288)):
        inputs = rng.normal(size=(1, 3, *size)).astype(np.float32)
        named = _in_graph_maps(plain, exported, inputs, [1])
        error = _relative_error(named[:, 0], _torch_cam(torch, model, inputs, 1))
        assert error <= IN_GRAPH, f"{size}: relative error {error:.3g} against torch"
    _same_results_csv(tmp_path, plain, exported, TWO_SIZES, *TORCHVISION_FLAGS)


# --------------------------------------------------------------------------------------------------- Keras


def _keras_cam(keras, model, inputs_nhwc: np.ndarray, classes: list[int]) -> np.ndarray:
    """Keras's CAM: the Dense kernel's columns . block5_conv3's output, (N, M, h, w)."""
    features = np.asarray(_keras_feature_model(keras, model)(inputs_nhwc)[0].detach().cpu())
    if features.shape[-1] != model.get_layer("predictions").get_weights()[0].shape[0]:
        features = features.transpose(0, 2, 3, 1)  # channels-first: N, C, h, w -> N, h, w, C
    kernel = model.get_layer("predictions").get_weights()[0]
    return np.einsum("nhwc,cm->nmhw", features, kernel[:, classes])


def test_keras_channels_last_in_graph_maps_and_results_csv(tmp_path, keras_export):
    """Before: the N, h, w, C feature map was reshaped as N, C, h*w: onnxruntime refused the written model
    (MatMul 'Incompatible dimensions'), and a model whose h equals C would have run with wrong maps."""
    keras, model, path, inputs = keras_export
    exported = _with_cam(path)
    named = _in_graph_maps(path, exported, inputs.transpose(0, 3, 1, 2), [0, 2])
    error = _relative_error(named, _keras_cam(keras, model, inputs, [0, 2]))
    assert error <= IN_GRAPH, f"relative error {error:.3g} against Keras"
    _same_results_csv(tmp_path, path, exported, PHOTOS, "--preset", "keras-vgg")  # Pillow's nearest resize


def test_keras_channels_first_in_graph_maps_and_results_csv(tmp_path, keras_channels_first_export):
    keras, model, path, inputs = keras_channels_first_export
    exported = _with_cam(path)
    named = _in_graph_maps(path, exported, inputs, [1, 2])
    error = _relative_error(named, _keras_cam(keras, model, inputs, [1, 2]))
    assert error <= IN_GRAPH, f"relative error {error:.3g} against Keras"
    _same_results_csv(tmp_path, path, exported, PHOTOS)


def test_keras_variable_size_channels_last_at_each_photos_own_size(tmp_path, keras_variable_size_export):
    keras, model, path = keras_variable_size_export
    exported = _with_cam(path)
    rng = np.random.default_rng(4)
    for size in ((48, 48), (30, 52)):
        inputs = rng.uniform(-1, 1, (1, *size, 3)).astype(np.float32)
        named = _in_graph_maps(path, exported, inputs.transpose(0, 3, 1, 2), [0])
        error = _relative_error(named, _keras_cam(keras, model, inputs, [0]))
        assert error <= IN_GRAPH, f"{size}: relative error {error:.3g} against Keras"
    _same_results_csv(tmp_path, path, exported, TWO_SIZES, "--preset", "keras-vgg")
