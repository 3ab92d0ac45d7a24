"""Fidelity against REAL Caffe: every stored blob of every model in ../shared/golden."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from tests.helpers import SHARED, assert_close, blobs_of, shared_path

GOLDEN = SHARED / "golden"
SHIPPED = [
    "synthetic_avepool_pad_ceil",
    "synthetic_bn_noscale",
    "synthetic_eltwise",
    "synthetic_eltwise2",
    "synthetic_eltwise_sumcoeff",
    "synthetic_lrn_k2",
    "synthetic_scale_softmax4d",
    "googlenet_cam",
    "googlenet_cam14",
    "squeezenet_v1.1",
]
REGENERATED = ["alexnetplus_cam_imagenet_v1", "mobilenet_v1", "mobilenet_v2"]


@pytest.fixture(scope="session")
def regenerated_golden(tmp_path_factory) -> Path:
    tools = shared_path("golden", "tools", "regen_weights.py")
    root = tmp_path_factory.mktemp("golden_regen")
    for name in REGENERATED:
        shutil.copytree(GOLDEN / name, root / name)
        for path in (root / name).iterdir():
            path.chmod(0o644)
    subprocess.run([sys.executable, str(tools), *REGENERATED], cwd=root, check=True, capture_output=True)
    return root


def _check_folder(folder: Path, tmp_path: Path) -> int:
    result = convert_files(
        folder / "deploy.prototxt",
        folder / "weights.caffemodel",
        tmp_path / "m.onnx",
        ConvertOptions(expose_all=True),
    )
    x = np.load(folder / "input.npy")
    blobs = blobs_of(result, tmp_path / "m.onnx", {"data": x})
    reference = np.load(folder / "blobs.npz")
    index_path = folder / "blobs_index.json"
    index = json.loads(index_path.read_text())["blobs"] if index_path.exists() else {}
    checked = 0
    for name in reference.files:
        if name in blobs:
            assert_close(blobs[name], reference[name], f"{folder.name}:{name}")
            checked += 1
        else:
            # Caffe's auto-inserted Split tops alias their source blob.
            alias = index.get(name, {}).get("alias_of") or "_split_" in name
            assert alias, f"{folder.name}: blob {name} missing from the conversion"
    return checked


@pytest.mark.parametrize("name", SHIPPED)
def test_golden_every_blob(name, tmp_path):
    folder = shared_path("golden", name)
    assert _check_folder(folder, tmp_path) > 3


@pytest.mark.slow
@pytest.mark.parametrize("name", REGENERATED)
def test_golden_regenerated_weights_every_blob(name, regenerated_golden, tmp_path):
    assert _check_folder(regenerated_golden / name, tmp_path) > 10


def test_googlenet_cam14_batch_of_two_with_deploy_batch_ten(tmp_path):
    folder = shared_path("golden", "googlenet_cam14")
    result = convert_files(
        folder / "deploy.prototxt",
        folder / "weights.caffemodel",
        tmp_path / "m.onnx",
        ConvertOptions(expose_all=True),
    )
    assert result.converted.symbolic_batch
    assert result.converted.cam_head["feature_blob"] == "CAM_conv"
    assert result.converted.cam_head["fc_layer"] == "CAM_fc_14"
    x = np.load(folder / "input.npy")
    assert x.shape[0] == 2
    blobs = blobs_of(result, tmp_path / "m.onnx", {"data": x})
    reference = np.load(folder / "blobs.npz")
    for name in reference.files:
        if "_split_" not in name:
            assert_close(blobs[name], reference[name], name)
    # CAM_conv is the value after the in-place CAM_relu
    assert blobs["CAM_conv"].min() >= 0


@pytest.mark.slow
@pytest.mark.parametrize("model,key", [("real_squeezenet_v1.0_dc", "pool_final"), ("real_open_nsfw", "prob")])
def test_real_pretrained_models_match_real_caffe(model, key, tmp_path):
    folder = shared_path("golden", model)
    data = np.load(folder / "real_outputs.npz")
    models = SHARED / "data" / "models"
    if model == "real_squeezenet_v1.0_dc":
        prototxt, weights = (
            models / "squeezenet_v1.0" / "deploy.prototxt",
            models / "squeezenet_v1.0" / "weights.caffemodel",
        )
        extra = ["conv_final"]
    else:
        prototxt, weights = (
            models / "open_nsfw" / "deploy.prototxt",
            models / "open_nsfw" / "weights.caffemodel",
        )
        extra = ["fc_nsfw", "pool", "eltwise_stage3_block2"]
    result = convert_files(prototxt, weights, tmp_path / "m.onnx", ConvertOptions(expose_all=True))
    stems = sorted({k.split("/")[0] for k in data.files if k.endswith("/input")})
    assert len(stems) >= 10
    for stem in stems:
        blobs = blobs_of(result, tmp_path / "m.onnx", {"data": data[f"{stem}/input"]})
        for blob in [key, *extra]:
            assert_close(blobs[blob], data[f"{stem}/{blob}"], f"{model}:{stem}:{blob}")
