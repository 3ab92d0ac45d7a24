"""CAM and Grad-CAM on models exported from PyTorch and Keras as a user of their tutorials would, against the
framework's own computation on the same net input: a ResNet18-style torch.nn net with a 2-class `fc`
(torch.onnx.export, legacy and dynamo), and a small Keras 3 VGG-style net (channels-last, global average pooling,
Dense softmax; `model.export(format="onnx")` on the torch backend). No edit of the ONNX files: only flags."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess
from camcaffe.runtime.session import ModelSession

RELATIVE = 1e-4


def _relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def _pipeline(path: Path, method: str, feature_layer: str | None = None, **settings) -> CamPipeline:
    session = ModelSession(path, "cpu")
    return CamPipeline(
        session, Preprocess(), CamSettings(method=method, **settings), feature_layer=feature_layer
    )


def _maps(pipeline: CamPipeline, inputs: np.ndarray, classes: list[int]) -> np.ndarray:
    """Raw maps (N, k, h, w) of the given classes for N, C, H, W net inputs, as `camcaffe cam` computes them
    (one image at a time: the dynamo export fixes the batch at 1)."""
    maps = []
    for image in inputs:
        probabilities, features = pipeline.infer(image[None])
        chosen = np.asarray([classes], np.int64)
        maps.append(pipeline.maps(image[None], features, probabilities, chosen)[0])
    return np.stack(maps)


# ------------------------------------------------------------------------------------------------- PyTorch


def _resnet18(torch):
    """ResNet18's layout (BasicBlocks [2, 2, 2, 2], 7x7 stem, max pool, adaptive average pool, fc) at a
    quarter of its widths, with a 2-class fc as in the CAM tutorials."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(outputs)
            self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(outputs)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inputs != outputs:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
                )

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        def __init__(self, widths=(16, 32, 64, 128), classes: int = 2):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, inputs = [], widths[0]
            for i, width in enumerate(widths):
                stride = 1 if i == 0 else 2
                layers.append(nn.Sequential(BasicBlock(inputs, width, stride), BasicBlock(width, width, 1)))
                inputs = width
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[-1], classes)

        def features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward(self, x):
            return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

        def forward_view(self, x):
            """The older tutorials' `x.view(x.size(0), -1)`: exported as Reshape to Shape -> Gather -> Concat."""
            pooled = self.avgpool(self.features(x))
            return self.fc(pooled.view(pooled.size(0), -1))

    torch.manual_seed(0)
    model = ResNet18()
    with torch.no_grad():  # trained-looking batch norm statistics, not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def torch_net(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the PyTorch export tests need torch (a CPU wheel)")
    inputs = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    return torch, _resnet18(torch), tmp_path_factory.mktemp("torch"), inputs


def _view_model(torch, model):
    """The same net (same weights) whose forward flattens with `view`."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net.forward_view(x)

    return Wrapper().eval()


def _export(torch_net, export: str) -> Path:
    """The net exported by torch.onnx.export as the tutorials do: legacy (TorchScript, dynamic batch; 'view':
    flattened by `view`, a shape computed at run time) or dynamo (torch.export; batch fixed at 1), once."""
    torch, model, folder, _ = torch_net
    path = folder / f"{export}.onnx"
    if path.exists():
        return path
    example = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if export in ("legacy", "view"):
            torch.onnx.export(
                model if export == "legacy" else _view_model(torch, model),
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
            return path
        pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False)
    return path


EXPORTS = ["legacy", "view", pytest.param("dynamo", marks=pytest.mark.slow)]  # the dynamo export takes ~25 s


def _torch_cam(torch, model, inputs: np.ndarray, cls: int) -> np.ndarray:
    """The CAM tutorials' computation: fc.weight[c] . features of layer4."""
    with torch.no_grad():
        features = model.features(torch.from_numpy(inputs)).numpy()
    return np.einsum("c,nchw->nhw", model.fc.weight[cls].detach().numpy(), features)


def _torch_gradcam(torch, model, inputs: np.ndarray, cls: int) -> np.ndarray:
    """Grad-CAM with torch autograd: ReLU(sum_c mean_hw(d score / d A_c) A_c) on layer4's output."""
    features = model.features(torch.from_numpy(inputs)).detach().requires_grad_(True)
    logits = model.fc(torch.flatten(model.avgpool(features), 1))
    (grads,) = torch.autograd.grad(logits[:, cls].sum(), features)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * features).sum(1)).detach().numpy()


@pytest.mark.parametrize("export", EXPORTS)
def test_torch_cam_from_fc_weight(torch_net, export):
    torch, model, _, inputs = torch_net
    pipeline = _pipeline(_export(torch_net, export), "cam")
    assert pipeline.layout == "nchw" and pipeline.head.num_classes == 2
    ours = _maps(pipeline, inputs, [0, 1])
    for cls in (0, 1):
        error = _relative_error(ours[:, cls], _torch_cam(torch, model, inputs, cls))
        assert error <= RELATIVE, f"{export} class {cls}: relative error {error:.3g}"


@pytest.mark.parametrize("export", EXPORTS)
def test_torch_gradcam_against_autograd(torch_net, export):
    """torch's dynamo export averages with ReduceMean: its backward rule is what this needs."""
    torch, model, _, inputs = torch_net
    pipeline = _pipeline(_export(torch_net, export), "gradcam")
    ours = _maps(pipeline, inputs, [1])[:, 0]
    error = _relative_error(ours, _torch_gradcam(torch, model, inputs, 1))
    assert error <= RELATIVE, f"{export}: relative error {error:.3g}"


def test_torch_score_prob_without_softmax_is_refused(torch_net):
    from camcaffe.errors import CamHeadError

    with pytest.raises(CamHeadError, match="--score prob: .* feed no Softmax output"):
        _pipeline(_export(torch_net, "legacy"), "gradcam", score="prob")


# --------------------------------------------------------------------------------------------------- Keras


def _keras(tmp_path_factory, top: str):
    """A small VGG-style Keras 3 net exported to ONNX: 'gap' (GAP + Dense softmax, the CAM tutorials) or
    'flatten' (Flatten + Dense relu + Dense softmax, VGG16 with its top as in Deep Learning with Python)."""
    pytest.importorskip("torch", reason="Keras 3 runs here on its torch backend, which needs torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the Keras export tests need keras 3")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()} backend; these tests use torch")
    pytest.importorskip("onnxscript", reason="Keras's ONNX export on the torch backend needs onnxscript")
    layers = keras.layers
    keras.utils.set_random_seed(0)
    image = keras.Input((48, 48, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(image)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv3")(x)
    if top == "gap":
        pooled = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        pooled = layers.Dense(12, activation="relu", name="fc1")(layers.Flatten(name="flatten")(x))
    predictions = layers.Dense(3, activation="softmax", name="predictions")(pooled)
    model = keras.Model(image, predictions)
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 4.0, bias])  # confident enough that the softmax gradient is not tiny
    model(np.zeros((1, 48, 48, 3), np.float32))  # Keras exports only a model that was called
    path = tmp_path_factory.mktemp("keras") / f"vgg_{top}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx")
    inputs = np.random.default_rng(1).uniform(-1, 1, size=(2, 48, 48, 3)).astype(np.float32)
    return keras, model, path, inputs


@pytest.fixture(scope="module")
def keras_export(tmp_path_factory):
    return _keras(tmp_path_factory, "gap")


@pytest.fixture(scope="module")
def keras_flatten_export(tmp_path_factory):
    return _keras(tmp_path_factory, "flatten")


def _keras_feature_model(keras, model):
    return keras.Model(model.input, [model.get_layer("block5_conv3").output, model.output])


def test_keras_cam_channels_last(keras_export):
    keras, model, path, inputs = keras_export
    pipeline = _pipeline(path, "cam")
    assert pipeline.layout == "nhwc" and pipeline.head.layout == "nhwc" and pipeline.input_hw == [48, 48]
    ours = _maps(pipeline, inputs.transpose(0, 3, 1, 2), [0, 2])
    features = np.asarray(_keras_feature_model(keras, model)(inputs)[0].detach().cpu())
    kernel = model.get_layer("predictions").get_weights()[0]  # (C, K)
    for j, cls in enumerate((0, 2)):
        theirs = features @ kernel[:, cls]  # (N, h, w): Keras's CAM, channels-last
        error = _relative_error(ours[:, j], theirs)
        assert error <= RELATIVE, f"class {cls}: relative error {error:.3g}"


def _keras_gradcam_prob(keras, model, inputs: np.ndarray, cls: int) -> np.ndarray:
    """Deep Learning with Python's Grad-CAM: gradient of the class PROBABILITY at block5_conv3, channel weights
    = mean gradient, mean over channels of the weighted map, ReLU, divided by the maximum."""
    import torch

    grad_model = _keras_feature_model(keras, model)
    heatmaps = []
    for image in inputs:
        conv_output, predictions = grad_model(torch.from_numpy(image[None]))
        (grads,) = torch.autograd.grad(predictions[:, cls].sum(), conv_output)
        pooled = grads.mean(dim=(0, 1, 2))
        heatmap = (conv_output[0] * pooled).mean(dim=-1).detach().cpu().numpy()
        heatmap = np.maximum(heatmap, 0)
        heatmaps.append(heatmap / heatmap.max())
    return np.stack(heatmaps)


def test_keras_gradcam_with_probability_score(keras_export):
    keras, model, path, inputs = keras_export
    pipeline = _pipeline(path, "gradcam", score="prob")
    assert pipeline.head.layout == "nhwc" and pipeline.head.prob_output is not None
    ours = _maps(pipeline, inputs.transpose(0, 3, 1, 2), [0])[:, 0]
    ours = ours / ours.max(axis=(1, 2), keepdims=True)
    error = _relative_error(ours, _keras_gradcam_prob(keras, model, inputs, 0))
    assert error <= RELATIVE, f"relative error {error:.3g}"
    probabilities, _ = pipeline.infer(inputs.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(probabilities, np.asarray(model(inputs).detach().cpu()), rtol=1e-4, atol=1e-6)


def test_keras_probability_and_logit_scores_give_different_maps(keras_export):
    _, _, path, inputs = keras_export
    batch = inputs.transpose(0, 3, 1, 2)
    logit = _maps(_pipeline(path, "gradcam", score="logit"), batch, [0])
    prob = _maps(_pipeline(path, "gradcam", score="prob"), batch, [0])
    normalised = [m / m.max(axis=(2, 3), keepdims=True) for m in (logit, prob)]
    assert np.abs(normalised[0] - normalised[1]).max() > 1e-3


def test_keras_gradcam_without_gap_finds_the_last_convolution(keras_flatten_export):
    """No CAM head (Flatten + Dense): the feature is the last Conv's value after the Transpose back to
    channels-last, its bias and its ReLU, i.e. Keras's block5_conv3 output."""
    keras, model, path, inputs = keras_flatten_export
    pipeline = _pipeline(path, "gradcam", score="prob")
    assert pipeline.head.layout == "nhwc"
    classes = np.asarray(model(inputs).detach().cpu()).argmax(axis=1)
    for image, cls in zip(inputs, classes, strict=True):
        ours = _maps(pipeline, image[None].transpose(0, 3, 1, 2), [int(cls)])[0, 0]
        theirs = _keras_gradcam_prob(keras, model, image[None], int(cls))[0]
        error = _relative_error(ours / ours.max(), theirs)
        assert error <= RELATIVE, f"class {cls}: relative error {error:.3g}"


# ------------------------------------------------------------------------------------ torchvision preprocessing

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "examples" / "demo" / "images").glob("*.*g"))


def _torchvision_input(photo: Path) -> np.ndarray:
    """transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)]) on
    Image.open(photo).convert('RGB'), written with Pillow and numpy (torchvision itself is not installed)."""
    image = pytest.importorskip("PIL.Image", reason="the torchvision reference preprocessing needs Pillow")
    picture = image.open(photo).convert("RGB")
    width, height = picture.size
    short, long = min(width, height), max(width, height)
    size = (256, int(256 * long / short)) if width <= height else (int(256 * long / short), 256)
    resized = picture.resize(size, image.BILINEAR)
    left, top = int(round((resized.size[0] - 224) / 2.0)), int(round((resized.size[1] - 224) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / np.float32(255)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1)[None]


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_torch_cam_with_the_torchvision_preset_on_photos(torch_net, photo, tmp_path):
    from camcaffe.engines.cam_run import CamOptions, apply_preset

    torch, model, _, _ = torch_net
    options = apply_preset(CamOptions(_export(torch_net, "legacy"), [], tmp_path, preset="torchvision"))
    preprocess = Preprocess(options.mean, None, options.raw_scale, options.channel_swap, None, options.std)
    session = ModelSession(_export(torch_net, "legacy"), "cpu")
    pipeline = CamPipeline(session, preprocess, CamSettings(method="cam", resize=options.resize))
    _, inputs = pipeline.load(photo)
    reference = _torchvision_input(photo)
    np.testing.assert_allclose(inputs, reference, rtol=0, atol=1e-5)
    ours = _maps(pipeline, inputs, [0, 1])
    probabilities, _ = pipeline.infer(inputs)
    with torch.no_grad():
        logits = model(torch.from_numpy(reference)).numpy()
    assert probabilities.argmax() == logits.argmax()
    for cls in (0, 1):
        error = _relative_error(ours[:, cls], _torch_cam(torch, model, reference, cls))
        assert error <= RELATIVE, f"class {cls}: relative error {error:.3g}"


# ------------------------------------------------------------------------- variable input size (symbolic H, W)

TWO_SIZES = [PHOTOS[0], PHOTOS[3]]  # caffe_cat.jpg 360x480, skimage_coffee.jpg 400x600
TORCHVISION_NORMALIZE = Preprocess(
    mean=[0.485, 0.456, 0.406], raw_scale=1.0, channel_swap=[0, 1, 2], std=[0.229, 0.224, 0.225]
)


def _export_dynamic_size(torch_net, export: str) -> Path:
    """The net exported with a variable height and width: legacy `dynamic_axes` on H, W, or dynamo with
    `dynamic_shapes` (torch.export.Dim), once."""
    torch, model, folder, _ = torch_net
    path = folder / f"{export}_dynamic_size.onnx"
    if path.exists():
        return path
    example = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if export == "legacy":
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}},
            )
            return path
        pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
        height, width = (
            torch.export.Dim("height", min=32, max=2048),
            torch.export.Dim("width", min=32, max=2048),
        )
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({2: height, 3: width},),
        )
    return path


def _unresized_torch_input(photo: Path) -> np.ndarray:
    """ToTensor() + Normalize(mean, std) of Image.open(photo).convert('RGB'), no resize (Pillow and numpy)."""
    image = pytest.importorskip("PIL.Image", reason="the reference preprocessing needs Pillow")
    pixels = np.asarray(image.open(photo).convert("RGB"), np.float32) / np.float32(255)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)[None]


@pytest.mark.slow
@pytest.mark.parametrize("export", ["legacy", "dynamo"])
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_torch_variable_size_export_maps_each_photo_at_its_own_size(torch_net, export, method):
    """No --input-size: two photos of different sizes go in unresized (one inference per size) and their maps
    equal torch's on the same unresized input."""
    torch, model, _, _ = torch_net
    session = ModelSession(_export_dynamic_size(torch_net, export), "cpu")
    pipeline = CamPipeline(session, TORCHVISION_NORMALIZE, CamSettings(method=method, top_k=2))
    assert pipeline.feed_hw is None
    prepared = pipeline.prepare(TWO_SIZES, ["cat", "coffee"])
    outcomes = pipeline.finish_batch(prepared, None)
    for photo, inputs, outcome in zip(TWO_SIZES, prepared.inputs, outcomes, strict=True):
        np.testing.assert_allclose(inputs, _unresized_torch_input(photo), rtol=0, atol=1e-5)
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.from_numpy(inputs)), 1).numpy()[0]
        for row, raw in zip(outcome.rows, outcome.cams, strict=True):
            assert abs(row["probability"] - probabilities[row["class_index"]]) < 1e-5
            reference = _torch_cam if method == "cam" else _torch_gradcam
            theirs = reference(torch, model, inputs, row["class_index"])[0]
            assert raw.shape == theirs.shape
            assert np.abs(theirs).max() > 0 or row["rank"] > 1  # (Grad-CAM of the second class may be all 0)
            error = _relative_error(raw, theirs)
            assert error <= RELATIVE, f"{photo.name} class {row['class_index']}: relative error {error:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("export", EXPORTS)
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_torch_module_names_as_feature_and_fc_layer(torch_net, export, method):
    """--feature-layer layer4 --fc-layer fc: torch's module names, found in the legacy export's scope paths
    (/layer4/layer4.1/relu_1/Relu, /fc/Gemm) and the dynamo export's name_scopes (node_relu_16, node_linear)."""
    torch, model, _, inputs = torch_net
    session = ModelSession(_export(torch_net, export), "cpu")
    named = CamPipeline(
        session, Preprocess(), CamSettings(method=method), feature_layer="layer4", fc_layer="fc"
    )
    default = _pipeline(_export(torch_net, export), method)
    assert named.head.feature_blob == default.head.feature_blob
    classes = [0, 1]
    ours = _maps(named, inputs, classes)
    for j, cls in enumerate(classes):
        reference = _torch_cam if method == "cam" else _torch_gradcam
        theirs = reference(torch, model, inputs, cls)
        if not np.abs(theirs).max():
            continue  # Grad-CAM of a class every channel speaks against is all zero: nothing to compare
        error = _relative_error(ours[:, j], theirs)
        assert error <= RELATIVE, f"{export} class {cls}: relative error {error:.3g}"


@pytest.mark.slow
def test_torch_module_name_that_is_not_there_is_one_line(torch_net):
    from camcaffe.errors import CamHeadError

    with pytest.raises(CamHeadError, match=r"feature layer 'layer5' is not in .*closest names: .*layer4"):
        CamPipeline(
            ModelSession(_export(torch_net, "legacy"), "cpu"),
            Preprocess(),
            CamSettings(),
            feature_layer="layer5",
        )


def _keras_module():
    pytest.importorskip("torch", reason="Keras 3 runs here on its torch backend, which needs torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the Keras export tests need keras 3")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {keras.backend.backend()} backend; these tests use torch")
    pytest.importorskip("onnxscript", reason="Keras's ONNX export on the torch backend needs onnxscript")
    return keras


@pytest.fixture(scope="module")
def keras_variable_size_export(tmp_path_factory):
    """Keras with None spatial dims. On the torch backend `model.export` traces at 1x1 (None becomes 1), so
    only a net that runs at 1x1 exports: stride-1 'same' convolutions, GAP, Dense softmax (no pooling)."""
    keras = _keras_module()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    image = keras.Input((None, None, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(image)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv3")(x)
    predictions = layers.Dense(3, activation="softmax", name="predictions")(
        layers.GlobalAveragePooling2D(name="gap")(x)
    )
    model = keras.Model(image, predictions)
    model(np.zeros((1, 48, 48, 3), np.float32))
    path = tmp_path_factory.mktemp("keras_variable") / "vgg_gap_variable.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx")
    return keras, model, path


@pytest.mark.slow
def test_keras_variable_size_export_maps_each_photo_at_its_own_size(keras_variable_size_export):
    keras, model, path = keras_variable_size_export
    caffe_mode = Preprocess(mean=[103.939, 116.779, 123.68], raw_scale=255.0, channel_swap=[2, 1, 0])
    pipeline = CamPipeline(ModelSession(path, "cpu"), caffe_mode, CamSettings(method="cam", top_k=3))
    assert pipeline.feed_hw is None and pipeline.layout == "nhwc"
    prepared = pipeline.prepare(TWO_SIZES, ["cat", "coffee"])
    outcomes = pipeline.finish_batch(prepared, None)
    kernel = model.get_layer("predictions").get_weights()[0]
    for inputs, outcome in zip(prepared.inputs, outcomes, strict=True):
        features = np.asarray(
            _keras_feature_model(keras, model)(inputs.transpose(0, 2, 3, 1))[0].detach().cpu()
        )
        for row, raw in zip(outcome.rows, outcome.cams, strict=True):
            theirs = features[0] @ kernel[:, row["class_index"]]
            assert raw.shape == theirs.shape == inputs.shape[2:]
            error = _relative_error(raw, theirs)
            assert error <= RELATIVE, f"class {row['class_index']}: relative error {error:.3g}"


@pytest.mark.slow
def test_keras_layer_names_are_not_in_a_torch_backend_export(keras_export):
    """Keras 3 on the torch backend exports nodes named /Conv_1, /Relu_1: no layer name survives, so
    block5_conv3 is refused in one line (tf2onnx exports keep them: tests/explain/test_layer_names.py)."""
    from camcaffe.errors import CamHeadError

    _, _, path, _ = keras_export
    with pytest.raises(CamHeadError, match="feature layer 'block5_conv3' is not in"):
        _pipeline(path, "gradcam", feature_layer="block5_conv3")


@pytest.fixture(scope="module")
def keras_channels_first_export(tmp_path_factory):
    """The small VGG-style GAP + Dense net with data_format='channels_first' on every layer (as with
    image_data_format 'channels_first'): the input is N,C,H,W and Keras's Convs need no Transposes."""
    keras = _keras_module()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    first = {"data_format": "channels_first"}
    image = keras.Input((3, 48, 48))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1", **first)(image)
    x = layers.MaxPooling2D(name="block1_pool", **first)(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv3", **first)(x)
    pooled = layers.GlobalAveragePooling2D(name="gap", **first)(x)
    model = keras.Model(image, layers.Dense(3, activation="softmax", name="predictions")(pooled))
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 4.0, bias])
    model(np.zeros((1, 3, 48, 48), np.float32))
    path = tmp_path_factory.mktemp("keras_first") / "vgg_gap_channels_first.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx")
    inputs = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 48, 48)).astype(np.float32)
    return keras, model, path, inputs


@pytest.mark.slow
def test_keras_cam_channels_first(keras_channels_first_export):
    keras, model, path, inputs = keras_channels_first_export
    pipeline = _pipeline(path, "cam")
    assert pipeline.layout == "nchw" and pipeline.head.layout == "nchw" and pipeline.input_hw == [48, 48]
    ours = _maps(pipeline, inputs, [0, 2])
    features = np.asarray(_keras_feature_model(keras, model)(inputs)[0].detach().cpu())  # (N, C, h, w)
    kernel = model.get_layer("predictions").get_weights()[0]
    for j, cls in enumerate((0, 2)):
        theirs = np.einsum("nchw,c->nhw", features, kernel[:, cls])
        error = _relative_error(ours[:, j], theirs)
        assert error <= RELATIVE, f"class {cls}: relative error {error:.3g}"


@pytest.mark.slow
def test_keras_gradcam_channels_first_with_probability_score(keras_channels_first_export):
    import torch

    keras, model, path, inputs = keras_channels_first_export
    pipeline = _pipeline(path, "gradcam", score="prob")
    ours = _maps(pipeline, inputs, [0])[:, 0]
    grad_model = _keras_feature_model(keras, model)
    for image, mine in zip(inputs, ours, strict=True):
        conv_output, predictions = grad_model(torch.from_numpy(image[None]))
        (grads,) = torch.autograd.grad(predictions[:, 0].sum(), conv_output)
        heatmap = (
            (conv_output[0] * grads.mean(dim=(0, 2, 3))[:, None, None]).mean(dim=0).detach().cpu().numpy()
        )
        heatmap = np.maximum(heatmap, 0)
        error = _relative_error(mine / mine.max(), heatmap / heatmap.max())
        assert error <= RELATIVE, f"relative error {error:.3g}"


# ------------------------------------------------------------------------------------------------- tf2onnx

TF2ONNX_PYTHON_ENV = "CAMCAFFE_TF2ONNX_PYTHON"  # a Python with tensorflow-cpu + tf2onnx (its own venv)
_TF2ONNX_SCRIPT = r"""
import os, sys, warnings
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras
folder = sys.argv[1]
layers = keras.layers
keras.utils.set_random_seed(0)
references = {}
for name, dims in (("static", (48, 48, 3)), ("variable", (None, None, 3))):
    image = keras.Input(dims)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(image)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv3")(x)
    pooled = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(image, layers.Dense(3, activation="softmax", name="predictions")(pooled))
    model(np.zeros((1, 48, 48, 3), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(os.path.join(folder, name + ".onnx"), format="onnx", verbose=False)
    features = keras.Model(model.inputs, model.get_layer("block5_conv3").output)
    kernel = model.get_layer("predictions").get_weights()[0]
    for size in ((48, 48), (40, 56)) if name == "variable" else ((48, 48),):
        x = np.random.default_rng(size[1]).uniform(-1, 1, (1, *size, 3)).astype(np.float32)
        key = f"{name}_{size[0]}x{size[1]}"
        references[key + "_input"] = x
        references[key + "_cam"] = np.einsum("hwc,ck->khw", np.asarray(features(x))[0], kernel)
        if name == "static":  # Deep Learning with Python's Grad-CAM: gradient of the class-0 PROBABILITY
            import tensorflow as tf
            grad_model = keras.Model(model.inputs, [model.get_layer("block5_conv3").output, model.output])
            with tf.GradientTape() as tape:
                conv, predictions = grad_model(x)
                score = predictions[:, 0]
            pooled = tf.reduce_mean(tape.gradient(score, conv), axis=(0, 1, 2))
            heatmap = np.maximum(np.asarray(tf.reduce_mean(conv[0] * pooled, axis=-1)), 0)
            references[key + "_gradcam"] = heatmap / heatmap.max()
np.savez(os.path.join(folder, "references.npz"), **references)
"""


def _tf2onnx_python() -> str:
    import importlib.util
    import sys

    given = os.environ.get(TF2ONNX_PYTHON_ENV)
    if given:
        return given
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None:
        pytest.skip(
            f"tf2onnx exports need tensorflow-cpu and tf2onnx (.ci/run installs them in .venv-tf); set "
            f"{TF2ONNX_PYTHON_ENV} to a Python that has them"
        )
    return sys.executable


@pytest.mark.slow
def test_tf2onnx_keras_exports_cam_and_layer_names(tmp_path):
    """Keras on TensorFlow exported by tf2onnx (`model.export(format='onnx')`): NHWC input, NCHW inside; the CAM
    equals Keras's Dense kernel . block5_conv3, with the default head and with --feature-layer block5_conv3
    (its scope is functional_1/block5_conv3_1), fixed size and variable size at the input's own size; and the
    probability-scored Grad-CAM of Deep Learning with Python (tf.GradientTape) at the fixed size."""
    import subprocess

    done = subprocess.run(
        [_tf2onnx_python(), "-c", _TF2ONNX_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    references = np.load(tmp_path / "references.npz")
    for key in sorted(k[: -len("_input")] for k in references.files if k.endswith("_input")):
        model = tmp_path / f"{key.split('_')[0]}.onnx"
        for feature_layer in (None, "block5_conv3"):
            pipeline = _pipeline(model, "cam", feature_layer=feature_layer)
            assert pipeline.layout == "nhwc" and "block5_conv3" in pipeline.head.feature_blob
            inputs = references[f"{key}_input"].transpose(0, 3, 1, 2)
            ours = _maps(pipeline, inputs, [0, 1, 2])[0]
            error = _relative_error(ours, references[f"{key}_cam"])
            assert error <= RELATIVE, f"{key} {feature_layer}: relative error {error:.3g}"
        if f"{key}_gradcam" in references.files:
            pipeline = _pipeline(model, "gradcam", score="prob")
            ours = _maps(pipeline, references[f"{key}_input"].transpose(0, 3, 1, 2), [0])[0, 0]
            error = _relative_error(ours / ours.max(), references[f"{key}_gradcam"])
            assert error <= RELATIVE, f"{key} Grad-CAM (probability): relative error {error:.3g}"
