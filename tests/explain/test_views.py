"""View strategies: the 10-crop oversampling and how its ten maps are merged over the photo."""

from __future__ import annotations

import numpy as np
import pytest

from camcaffe.errors import CamcaffeError
from camcaffe.explain.views import VIEWS, make_views
from camcaffe.runtime.preprocess import load_image, oversample, resize_image
from tests.helpers import shared_path


def test_tencrop_inputs_are_caffe_io_oversample_of_the_256_resize():
    views = make_views("tencrop", (24, 20), crop_base=32)
    assert views.count == 10 and VIEWS["tencrop"] is type(views)
    image = np.random.default_rng(0).random((45, 70, 3)).astype(np.float32)
    crops = views.inputs(image)
    expected = oversample([resize_image(image, (32, 32))], (24, 20))
    assert len(crops) == 10 and all(np.array_equal(a, b) for a, b in zip(crops, expected, strict=True))
    # corners TL, TR, BL, BR and the centre; views 5-9 are their mirrors
    assert views.offsets() == [(0, 0), (0, 12), (8, 0), (8, 12), (4, 6)]
    assert np.array_equal(crops[6], crops[1][:, ::-1])


def test_tencrop_merge_puts_each_map_back_in_place():
    """Maps at input resolution cut from one 'true' map: the merge is |true| x coverage, over its max."""
    base, size = 16, 12
    views = make_views("tencrop", (size, size), crop_base=base)
    truth = np.random.default_rng(1).normal(size=(base, base)).astype(np.float32)
    raw = np.empty((10, 1, size, size), np.float32)
    coverage = np.zeros((base, base))
    for v, (top, left) in enumerate(views.offsets() * 2):
        crop = truth[top : top + size, left : left + size]
        raw[v, 0] = crop if v < 5 else crop[:, ::-1]  # a mirrored input sees the mirrored scene
        coverage[top : top + size, left : left + size] += 1
    merged = views.to_image_space(raw, base, base)
    expected = np.abs(truth) * coverage
    np.testing.assert_allclose(merged[0], expected / expected.max(), rtol=1e-5, atol=1e-6)
    assert coverage[0, 0] == 2 and coverage[8, 8] == 10  # a corner is seen by one crop and its mirror


def test_tencrop_checks():
    with pytest.raises(CamcaffeError, match="--crops 10"):
        make_views("tencrop", (300, 300))
    views = make_views("tencrop", (224, 224))
    with pytest.raises(CamcaffeError, match="10, k, h, w"):
        views.to_image_space(np.zeros((1, 1, 14, 14), np.float32), 50, 50)
    assert not views.to_image_space(np.zeros((10, 2, 7, 7), np.float32), 30, 40).any()


def test_googlenet_cam_img1_ten_crops_peak_on_the_cup():
    """The authors' stored GoogLeNet-CAM features of img1.jpg (10 crops) and classifier weights."""
    features = np.load(shared_path("data", "cam_reference", "googlenet_cam_img1_features.npz"))
    weights = np.load(shared_path("data", "cam_reference", "googlenet_cam_fc.npz"))["CAM_fc_weight"]
    labels = shared_path("data", "labels", "synset_words.txt").read_text().splitlines()
    image = load_image(shared_path("data", "cam_reference", "img1.jpg"))
    probabilities = features["prob"].mean(axis=0)  # classes ranked on the averaged probabilities
    top = int(np.argmax(probabilities))
    assert labels[top] == "n07930864 cup" and probabilities[top] == pytest.approx(0.2337, abs=1e-3)
    raw = np.einsum("c,vchw->vhw", weights[top], features["CAM_conv"])[:, None]
    merged = make_views("tencrop", (224, 224)).to_image_space(raw, *image.shape[:2])[0]
    y, x = np.unravel_index(int(np.argmax(merged)), merged.shape)
    # the cup on its saucer spans about x 110-185, y 95-140 of the 256 x 256 photo
    assert 110 <= x <= 185 and 95 <= y <= 140, (x, y)
    assert merged.max() == 1.0 and merged.min() >= 0.0


def test_torchvision_view_crops_the_pil_resize_and_places_the_map_back():
    from camcaffe.runtime.pil_resize import pil_bilinear_resize

    views = make_views("torchvision", (224, 224))
    image = np.random.default_rng(9).integers(0, 256, (375, 500, 3)).astype(np.float32) / 255
    (crop,) = views.inputs(image)
    resized = pil_bilinear_resize(np.rint(image * 255).astype(np.uint8), (256, 341))
    np.testing.assert_array_equal(crop, resized[16:240, 58:282].astype(np.float32) / 255)
    raw = np.zeros((1, 1, 7, 7), np.float32)
    raw[0, 0, 3, 3] = 1.0  # the centre of the crop ...
    placed = views.to_image_space(raw, 375, 500)
    assert placed.shape == (1, 375, 500)
    peak = np.unravel_index(placed[0].argmax(), placed[0].shape)
    assert abs(peak[0] - 187) <= 8 and abs(peak[1] - 250) <= 8  # ... lands at the photo's centre


def test_torchvision_view_refuses_a_crop_larger_than_the_resize():
    views = make_views("torchvision", (300, 300))
    with pytest.raises(CamcaffeError, match="--resize torchvision: .* smaller than the net input"):
        views.inputs(np.zeros((400, 500, 3), np.float32))


def test_torchvision_view_refuses_a_strip_whose_resize_would_be_huge(monkeypatch):
    """A 1 x 1500 strip resizes to 256 x 384000 before the crop (3.6 GB in the exact resize): refused for that
    image, before anything is allocated, with the remedy."""
    monkeypatch.delenv("CAMCAFFE_MAX_IMAGE_PIXELS", raising=False)
    views = make_views("torchvision", (224, 224))
    with pytest.raises(CamcaffeError, match=r"1x1500 photo would be resized to 256x384000 .* --resize warp"):
        views.pixels(np.zeros((1, 1500, 3), np.uint8))
    assert views.geometry(100, 1000)[0] == (256, 2560)  # an ordinary panorama passes


def test_resize_filters_each_view_accepts():
    assert make_views("warp", (8, 8)).resize_filter == "caffe"
    assert make_views("torchvision", (8, 8)).resize_filter == "pil-bilinear"
    assert make_views("crop", (8, 8), resize_filter="pil-bicubic").pil_filter == "bicubic"
    with pytest.raises(
        CamcaffeError, match="--crops 10 resizes with caffe.io only; drop --resize-filter pil-nearest"
    ):
        make_views("tencrop", (8, 8), resize_filter="pil-nearest")
    with pytest.raises(CamcaffeError, match="--resize torchvision resizes as Pillow does"):
        make_views("torchvision", (8, 8), resize_filter="caffe")
    with pytest.raises(CamcaffeError, match="--resize-filter pil-area: unknown"):
        make_views("warp", (8, 8), resize_filter="pil-area")


def test_pillow_views_give_the_same_pixels_from_floats_and_from_8_bits():
    """`inputs` (float images, as evaluate's masked photos) and `pixels` (the pipeline's 8-bit path) agree."""
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for name in ("warp", "crop", "torchvision"):
        views = make_views(name, (16, 16), crop_base=24, resize_filter="pil-nearest")
        from_floats = views.inputs(pixels.astype(np.float32) / np.float32(255.0))[0]
        (from_bytes,) = views.pixels(pixels)
        assert from_bytes.shape == (16, 16, 3)
        np.testing.assert_allclose(from_floats, from_bytes / np.float32(255.0), rtol=0, atol=1e-7)
