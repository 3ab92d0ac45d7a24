"""Pillow's antialiased bilinear resize reproduced without Pillow, checked pixel for pixel against Pillow on
random images and the demo photos; torchvision's Resize / CenterCrop geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcaffe.runtime.pil_resize import centre_crop_offset, pil_bilinear_resize, torchvision_resize_size
from camcaffe.runtime.preprocess import PreprocessError

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "examples" / "demo" / "images").glob("*.*g"))


def _pillow(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = pytest.importorskip("PIL.Image", reason="the reference resize is Pillow's own")
    return np.asarray(image.fromarray(pixels).resize((size[1], size[0]), image.BILINEAR))


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((375, 500, 3), (256, 341)),  # torchvision's Resize(256) of a landscape photo
        ((500, 375, 3), (341, 256)),
        ((100, 80, 3), (256, 204)),  # enlarging
        ((33, 47, 3), (10, 7)),  # strong reduction: wide windows
        ((40, 50, 3), (40, 61)),  # one pass only
        ((7, 9, 3), (300, 5)),
        ((64, 48), (30, 20)),  # grey
    ],
)
def test_equals_pillow_on_random_pixels(shape, size):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(pil_bilinear_resize(pixels, size), _pillow(pixels, size))


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_equals_pillow_on_photos(photo):
    image = pytest.importorskip("PIL.Image", reason="the reference resize is Pillow's own")
    pixels = np.asarray(image.open(photo).convert("RGB"))
    size = torchvision_resize_size(pixels.shape[0], pixels.shape[1], 256)
    np.testing.assert_array_equal(pil_bilinear_resize(pixels, size), _pillow(pixels, size))


def test_torchvision_geometry():
    assert torchvision_resize_size(375, 500, 256) == (256, 341)
    assert torchvision_resize_size(500, 375, 256) == (341, 256)
    assert torchvision_resize_size(300, 300, 256) == (256, 256)
    assert centre_crop_offset(256, 341, (224, 224)) == (16, 58)  # round(58.5) = 58, as Python rounds
    assert centre_crop_offset(256, 343, (224, 224)) == (16, 60)  # round(59.5) = 60


def test_refuses_float_pixels_and_empty_sizes():
    with pytest.raises(PreprocessError, match="8-bit"):
        pil_bilinear_resize(np.zeros((4, 4, 3), np.float32), (2, 2))
    with pytest.raises(PreprocessError, match="positive"):
        pil_bilinear_resize(np.zeros((4, 4, 3), np.uint8), (0, 2))
