"""examples/legacy_cam_demo.py, the classic pycaffe CAM demo run through `import camcaffe as caffe`: its CAM and
probabilities against an independent numpy computation (REAL Caffe blobs on GoogLeNet-CAM-14, a numpy Caffe
oracle on a small net), and the script end to end."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.caffe.caffemodel import read_caffemodel
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.helpers import assert_close, shared_path

pytestmark = pytest.mark.slow  # runs the whole legacy script on real models

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "legacy_cam_demo.py"

TINY_CAM_NET = """name: "tiny_cam"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 224
input_dim: 224
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 8 stride: 8 } }
layer { name: "CAM_conv" type: "Convolution" bottom: "conv1" top: "CAM_conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "CAM_relu" type: "ReLU" bottom: "CAM_conv" top: "CAM_conv" }
layer { name: "CAM_pool" type: "Pooling" bottom: "CAM_conv" top: "CAM_pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "CAM_fc_14" type: "InnerProduct" bottom: "CAM_pool" top: "CAM_fc_14"
  inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "CAM_fc_14" top: "prob" }
"""


def load_demo():
    spec = importlib.util.spec_from_file_location("legacy_cam_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def numpy_cam(weights: np.ndarray, features: np.ndarray, class_index: int) -> np.ndarray:
    """CAM_c(x, y) = sum_k w[c, k] f_k(x, y), written independently of the demo."""
    return np.einsum("k,kyx->yx", weights[class_index].astype(np.float64), features.astype(np.float64))


def classifier(caffemodel: Path, layer: str) -> tuple[np.ndarray, np.ndarray]:
    weight, bias = read_caffemodel(caffemodel).get(layer).blobs
    return np.array(weight.values).reshape(weight.shape), np.array(bias.values)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()


def test_source_says_only_the_import_changed() -> None:
    head = DEMO.read_text()[:800]
    assert "only change from the pycaffe original is `import camcaffe as caffe`" in head
    assert "import camcaffe as caffe\n" in DEMO.read_text()


def test_run_cam_matches_real_caffe_blobs() -> None:
    root = shared_path("golden", "googlenet_cam14")
    demo = load_demo()
    net = caffe.Net(str(root / "deploy.prototxt"), str(root / "weights.caffemodel"), caffe.TEST)
    x = np.load(root / "input.npy")[0:1]
    result = demo.run_cam(net, x, "CAM_fc_14", "CAM_conv")
    reference = np.load(root / "blobs.npz")
    features, probs = reference["CAM_conv"][0], reference["prob"][0]
    assert_close(result.probs, probs, "prob")
    top_two = np.sort(probs)[-2:]
    assert top_two[1] - top_two[0] > 1e-3, "reference top-1 is ambiguous; the check would be meaningless"
    assert result.class_index == int(np.argmax(probs))
    weights, bias = classifier(root / "weights.caffemodel", "CAM_fc_14")
    assert weights.shape == (14, 1024)
    assert_close(result.feature_maps, features, "CAM_conv")
    assert_close(result.cam, numpy_cam(weights, features, result.class_index), "CAM")
    # the CAM head is what produced the probabilities: softmax(W . GAP(F) + b)
    assert_close(softmax(weights @ features.mean(axis=(1, 2)) + bias), probs, "softmax(W GAP(F) + b)")


def test_run_cam_on_a_small_net_matches_a_numpy_forward(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_CAM_NET)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    x = np.random.default_rng(0).uniform(-100, 100, (3, 224, 224)).astype(np.float32)
    result = load_demo().run_cam(net, x)
    weights = {
        name: [np.array(b.values).reshape(b.shape) for b in layer.blobs]
        for name, layer in read_caffemodel(caffemodel).layers.items()
    }
    blobs = caffe_reference.forward(TINY_CAM_NET, weights, {"data": x[np.newaxis]})
    assert_close(result.probs, blobs["prob"][0], "prob")
    assert result.class_index == int(np.argmax(blobs["prob"][0]))
    expected = numpy_cam(weights["CAM_fc_14"][0], blobs["CAM_conv"][0], result.class_index)
    assert result.cam.shape == (28, 28)
    assert_close(result.cam, expected, "CAM")


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(DEMO), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def check_overlay(path: Path, image_path: Path) -> None:
    assert path.is_file()
    overlay = cv2.imread(str(path))
    assert overlay is not None, f"{path} is not a readable image"
    assert overlay.shape == cv2.imread(str(image_path)).shape
    assert overlay.std() > 1.0


def test_script_end_to_end_on_a_photo(tmp_path: Path) -> None:
    root = shared_path("golden", "googlenet_cam14")
    photo = shared_path("data", "cam_reference", "img1.jpg")
    out = tmp_path / "overlay.png"
    done = run_script(
        [
            str(root / "deploy.prototxt"),
            str(root / "weights.caffemodel"),
            str(photo),
            str(root / "class_labels.csv"),
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "CAM_fc_14\t(14, 1024) (14,)" in done.stdout
    assert "CAM_conv\t(10, 1024, 14, 14)" in done.stdout
    labels = [line.split(" ", 1)[1] for line in (root / "class_labels.csv").read_text().splitlines()]
    assert any(f"CAM of the top class: {label}" in done.stdout for label in labels)
    check_overlay(out, photo)


def test_script_end_to_end_on_a_small_net(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_CAM_NET)
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=6)
    image = tmp_path / "photo.png"
    gradient = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3).astype(np.uint8)
    cv2.imwrite(str(image), gradient)
    labels = tmp_path / "labels.csv"
    labels.write_text("0 cat\n1 dog\n2 bird\n")
    out = tmp_path / "overlay.png"
    done = run_script([str(prototxt), str(caffemodel), str(image), str(labels), "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "CAM of the top class: " in done.stdout
    check_overlay(out, image)
