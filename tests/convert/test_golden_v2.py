"""Fidelity against REAL Caffe for fork layers: every stored blob of every net in ../shared/golden_v2.

Set v2 was produced by a Caffe build with the SSD and other fork layers (see its README). Detection and
proposal outputs have data-dependent shapes: the shapes must agree first, then every value."""

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

GOLDEN_V2 = SHARED / "golden_v2"
REAL_NETS = {"mobilenet_ssd", "opencv_face_res10_ssd", "ssd300_vgg16_voc"}  # whole real deploys: slow
FOLDERS = [
    "act_relu6_hardswish_hardsigmoid",
    "embed_parameter_batchreindex",
    "mobilenet_ssd",
    "mvn",
    "normalize",
    "opencv_face_res10_ssd",
    "pad_pixelshuffle_resize",
    "permute_flatten_reshape",
    "pool_ceil_mode",
    "pool_mask_unpool_upsample",
    "priorbox",
    "proposal",
    "reduction_tile_silence",
    "spp_im2col_filter",
    "ssd300_vgg16_voc",
    "ssd_tiny_head",
]


def _prepared(name: str, tmp_path: Path) -> Path:
    """The folder itself, or a writable copy with weights.caffemodel rebuilt from skeleton + recipe."""
    folder = shared_path("golden_v2", name)
    if not (folder / "weights.skeleton.bin").exists():
        return folder
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tool = GOLDEN_V2 / "tools" / "regen_weights.py"
    subprocess.run([sys.executable, str(tool), name], cwd=tmp_path, check=True, capture_output=True)
    return copy


def _inputs(folder: Path, index: dict) -> dict[str, np.ndarray]:
    if (folder / "inputs.npz").exists():
        data = np.load(folder / "inputs.npz")
        return {key: data[key] for key in data.files}
    return {index["input_blobs"][0]: np.load(folder / "input.npy")}


def check_golden_v2(name: str, tmp_path: Path) -> int:
    folder = _prepared(name, tmp_path)
    index = json.loads((folder / "blobs_index.json").read_text())
    weights = folder / "weights.caffemodel"
    result = convert_files(
        folder / "deploy.prototxt",
        weights if weights.exists() else None,
        tmp_path / "m.onnx",
        ConvertOptions(expose_all=True),
    )
    feeds = _inputs(folder, index)
    blobs = blobs_of(result, tmp_path / "m.onnx", feeds)
    reference = np.load(folder / "blobs.npz")
    checked = 0
    for blob in reference.files:
        if blob in blobs:
            assert_close(np.asarray(blobs[blob]), reference[blob], f"{name}:{blob}")
            checked += 1
        else:
            info = index["blobs"].get(blob, {})
            assert info.get("alias_of") or "_split_" in blob, (
                f"{name}: blob {blob} missing from the conversion"
            )
    for output in index["outputs"]:
        assert output in blobs, f"{name}: output {output} missing"
    return checked


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in REAL_NETS else name for name in FOLDERS]
)
def test_golden_v2_every_blob(name, tmp_path):
    assert check_golden_v2(name, tmp_path) >= 1
