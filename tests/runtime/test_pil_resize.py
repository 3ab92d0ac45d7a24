"""Pillow's resize filters (nearest, box, bilinear, hamming, bicubic, lanczos) reproduced without Pillow, checked
pixel for pixel against Pillow on random images of odd sizes and the demo photos; torchvision's Resize /
CenterCrop geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcaffe.runtime.pil_resize import (
    PIL_FILTERS,
    centre_crop_offset,
    pil_bilinear_resize,
    pil_resize,
    torchvision_resize_size,
)
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


# ------------------------------------------------------------------------------------------- every filter


def _pillow_filter(pixels: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    image = pytest.importorskip("PIL.Image", reason="the reference resize is Pillow's own")
    return np.asarray(
        image.fromarray(pixels).resize((size[1], size[0]), getattr(image.Resampling, name.upper()))
    )


ODD_CASES = [
    ((375, 500, 3), (224, 224)),  # Keras's load_img(target_size=(224, 224)) of a landscape photo
    ((33, 47, 3), (299, 299)),  # enlarging both ways
    ((301, 451, 3), (17, 1001)),  # one axis shrinks, the other grows: Pillow 13 goes vertical first
    ((513, 257, 3), (101, 250)),  # the height shrinks more than twice what the width loses: vertical first
    ((7, 9, 3), (300, 5)),
    ((3, 1000, 3), (224, 224)),
    ((224, 224, 3), (225, 223)),
    ((64, 48), (30, 20)),  # grey
]


@pytest.mark.parametrize("name", PIL_FILTERS)
@pytest.mark.parametrize(
    ("shape", "size"), ODD_CASES, ids=[f"{s[0]}x{s[1]}-{z[0]}x{z[1]}" for s, z in ODD_CASES]
)
def test_every_filter_equals_pillow_on_random_pixels(name, shape, size):
    pixels = np.random.default_rng(sum(shape) + sum(size)).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(pil_resize(pixels, size, name), _pillow_filter(pixels, size, name))


@pytest.mark.parametrize("name", PIL_FILTERS)
@pytest.mark.parametrize("photo", PHOTOS, ids=[p.name for p in PHOTOS])
def test_every_filter_equals_pillow_on_photos(photo, name):
    image = pytest.importorskip("PIL.Image", reason="the reference resize is Pillow's own")
    pixels = np.asarray(image.open(photo).convert("RGB"))
    for size in ((224, 224), (299, 299), (123, 457), (1001, 777)):
        np.testing.assert_array_equal(
            pil_resize(pixels, size, name), _pillow_filter(pixels, size, name), err_msg=f"{photo.name} {size}"
        )


def test_nearest_accumulates_the_position_as_pillow_does():
    """Pillow adds the scale step by step in double precision; computing (x + 0.5) * scale instead picks another
    source pixel where the sum lands just below an integer (2 -> 7, 2 -> 15 and 33,900 other pairs of sizes
    under 600 -> 300)."""
    for in_size, out_size in ((2, 7), (2, 15), (2, 21), (7, 5), (1000, 3)):
        pixels = (np.arange(in_size) % 251).astype(np.uint8).reshape(1, in_size)
        ours = pil_resize(pixels, (1, out_size), "nearest")
        np.testing.assert_array_equal(ours, _pillow_filter(pixels, (1, out_size), "nearest"))
        np.testing.assert_array_equal(pil_resize(pixels.T, (out_size, 1), "nearest"), ours.T)


def test_refuses_unknown_filters():
    with pytest.raises(PreprocessError, match="unknown Pillow filter 'area'"):
        pil_resize(np.zeros((4, 4, 3), np.uint8), (2, 2), "area")
