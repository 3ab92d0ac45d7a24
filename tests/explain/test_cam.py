"""CAM arithmetic against independent loops and the CAM authors' stored GoogLeNet-CAM features."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from camcaffe.explain.cam import (
    CamInputError,
    compute_cams,
    global_average_pool,
    normalize,
    select_class_maps,
    softmax,
    top_k,
    upsample,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
CAM_REF = SHARED / "data" / "cam_reference"
SIMPLE_LABELS = SHARED / "data" / "labels" / "imagenet-simple-labels.json"


def _loop_cams(features: np.ndarray, weights: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    n, c, h, w = features.shape
    out = np.zeros((n, class_indices.shape[1], h, w), np.float64)
    for i in range(n):
        for j, cls in enumerate(class_indices[i]):
            for ch in range(c):
                out[i, j] += weights[cls, ch] * features[i, ch].astype(np.float64)
    return out


def test_compute_cams_equals_per_channel_loop() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 6, 4, 5)).astype(np.float32)
    weights = rng.normal(size=(7, 6)).astype(np.float32)
    idx = np.array([[0, 6], [3, 3], [5, 1]])
    cams = compute_cams(features, weights, idx)
    assert cams.shape == (3, 2, 4, 5) and cams.dtype == np.float32
    np.testing.assert_allclose(cams, _loop_cams(features, weights, idx), rtol=1e-5, atol=1e-5)


def test_compute_cams_rejects_mismatches() -> None:
    features = np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises(CamInputError, match="4 channels"):
        compute_cams(features, np.zeros((5, 3)), np.zeros((2, 1), int))
    with pytest.raises(CamInputError, match="class index 5 is outside 0..4"):
        compute_cams(features, np.zeros((5, 4)), np.array([[0], [5]]))
    with pytest.raises(CamInputError, match=r"\(N, k\)"):
        compute_cams(features, np.zeros((5, 4)), np.zeros((3, 1), int))
    with pytest.raises(ValueError):
        compute_cams(features, np.zeros((5, 4)), np.zeros((2, 1), float))


def test_select_class_maps_equals_identity_weights() -> None:
    maps = np.random.default_rng(1).normal(size=(2, 5, 3, 3)).astype(np.float32)
    idx = np.array([[4, 0], [2, 2]])
    selected = select_class_maps(maps, idx)
    np.testing.assert_array_equal(selected, compute_cams(maps, np.eye(5, dtype=np.float32), idx))
    np.testing.assert_array_equal(selected[0, 0], maps[0, 4])


def test_googlenet_cam_reference_features() -> None:
    fc, feats = CAM_REF / "googlenet_cam_fc.npz", CAM_REF / "googlenet_cam_img1_features.npz"
    for path in (fc, feats, SIMPLE_LABELS):
        if not path.is_file():
            pytest.skip(f"{path} not available")
    weights = np.load(fc)["CAM_fc_weight"]
    with np.load(feats) as npz:
        features, prob = npz["CAM_conv"], npz["prob"]
    labels = json.loads(SIMPLE_LABELS.read_text(encoding="utf-8"))
    cup = labels.index("cup")
    assert cup == 968

    probabilities = softmax(global_average_pool(features) @ weights.T)
    assert np.abs(probabilities - prob).max() < 1e-3  # the data README states 9e-4
    indices, values = top_k(probabilities.mean(axis=0), 1)
    assert labels[int(indices[0])] == "cup"
    crop_top, _ = top_k(probabilities, 5)
    assert crop_top[4, 0] == cup  # the centre crop

    cams = compute_cams(features, weights, crop_top)
    for n in (0, 4, 9):
        for j in range(5):
            independent = np.tensordot(weights[crop_top[n, j]], features[n], axes=(0, 0))
            np.testing.assert_allclose(cams[n, j], independent, rtol=1e-4, atol=1e-4)
    # the spatial mean of a CAM is the class logit (no bias in GoogLeNet-CAM)
    logits = global_average_pool(features) @ weights.T
    np.testing.assert_allclose(cams[:, 0].mean(axis=(1, 2)), logits[np.arange(10), crop_top[:, 0]], rtol=1e-4)


def test_upsample_matches_cv2_and_handles_batches() -> None:
    rng = np.random.default_rng(2)
    cam = rng.normal(size=(7, 9)).astype(np.float32)
    np.testing.assert_array_equal(
        upsample(cam, (30, 20)), cv2.resize(cam, (20, 30), interpolation=cv2.INTER_LINEAR)
    )
    many = rng.normal(size=(2, 300, 3, 4)).astype(np.float32)  # 600 maps: more than OpenCV's 512 channels
    out = upsample(many, (5, 6))
    assert out.shape == (2, 300, 5, 6)
    for n, k in ((0, 0), (1, 299), (1, 211)):
        expected = cv2.resize(many[n, k], (6, 5), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(out[n, k], expected, atol=1e-6)
    with pytest.raises(CamInputError):
        upsample(cam, (0, 4))


def test_normalize_per_map() -> None:
    cams = np.stack([np.arange(6, dtype=np.float32).reshape(2, 3) * 3 - 4, np.full((2, 3), 7.0, np.float32)])
    out = normalize(cams)
    np.testing.assert_allclose(out[0], np.arange(6).reshape(2, 3) / 5.0, atol=1e-7)
    np.testing.assert_array_equal(out[1], np.zeros((2, 3)))
    assert out.dtype == np.float32


def test_top_k() -> None:
    probs = np.array([[0.1, 0.5, 0.2, 0.5], [0.9, 0.0, 0.05, 0.05]])
    idx, val = top_k(probs, 3)
    np.testing.assert_array_equal(idx, [[1, 3, 2], [0, 2, 3]])
    np.testing.assert_allclose(val, [[0.5, 0.5, 0.2], [0.9, 0.05, 0.05]])
    idx1, val1 = top_k(np.array([0.2, 0.8]), 5)  # k larger than K is clipped
    np.testing.assert_array_equal(idx1, [1, 0])
    assert val1.shape == (2,)
    with pytest.raises(CamInputError):
        top_k(probs, 0)
