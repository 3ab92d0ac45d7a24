"""Overlays and atomic image writing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from camcaffe.errors import ImageError, InputFileError
from camcaffe.explain.cam import CamInputError
from camcaffe.output.render import heatmap, overlay, write_image_atomic


def _image(h: int = 60, w: int = 80) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_alpha_extremes() -> None:
    image = _image()
    cam = np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80)
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), image)
    jet = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(overlay(image, cam, alpha=1.0), jet)
    half = overlay(image, cam, alpha=0.5)
    assert half.dtype == np.uint8 and half.shape == image.shape
    np.testing.assert_allclose(half.astype(int), (image.astype(int) + jet.astype(int)) / 2, atol=1)


def test_small_cam_is_resized_and_hot_spot_is_red() -> None:
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    out = overlay(np.zeros((70, 70, 3), np.uint8), cam, alpha=1.0)
    b, g, r = out[35, 35]
    assert r > 100 and b < 50  # JET: high = red
    b0, _, r0 = out[0, 0]
    assert b0 > 100 and r0 < 50  # JET: low = blue


def test_box_and_text_are_drawn() -> None:
    image = np.full((120, 200, 3), 128, np.uint8)
    cam = np.zeros((120, 200), np.float32)
    out = overlay(image, cam, alpha=0.0, text="cup 0.87", box=(50, 60, 150, 110))
    top = out.shape[0] - 120  # the label strip sits above the photo: the photo keeps every pixel
    assert 10 <= top <= 40 and out.shape[1:] == image.shape[1:]
    photo = out[top:]
    np.testing.assert_array_equal(photo[110, 100], (0, 255, 0))  # bottom edge of the box
    np.testing.assert_array_equal(photo[85, 50], (0, 255, 0))  # left edge
    np.testing.assert_array_equal(photo[85, 100], (128, 128, 128))  # inside untouched
    np.testing.assert_array_equal(photo[:5, :], image[:5, :])  # the top of the photo is not covered
    strip = out[:top]
    assert (strip.max(axis=2) < 40).mean() > 0.5  # mostly dark strip
    assert (strip.min(axis=2) > 200).any()  # with white text on it
    np.testing.assert_array_equal(out[-1, 0], (128, 128, 128))


def test_overlay_rejects_bad_arguments() -> None:
    with pytest.raises(CamInputError):
        overlay(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)))
    with pytest.raises(CamInputError):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), alpha=2.0)
    assert heatmap(np.full((2, 2), np.nan)).shape == (2, 2, 3)


def test_write_image_atomic_roundtrip(tmp_path: Path) -> None:
    image = _image()
    target = write_image_atomic(tmp_path / "a_cam.png", image)
    np.testing.assert_array_equal(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_cam.png"]  # no temporary file left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o640)
    write_image_atomic(target, image[::-1])
    np.testing.assert_array_equal(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), image[::-1])
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_write_failures_leave_existing_file_intact(tmp_path: Path) -> None:
    target = write_image_atomic(tmp_path / "keep.png", _image())
    before = target.read_bytes()
    with pytest.raises(ImageError, match="keep.png"):
        write_image_atomic(target, np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(InputFileError, match="extension"):
        write_image_atomic(tmp_path / "noext", _image())
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_write_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="missing does not exist"):
        write_image_atomic(tmp_path / "missing" / "x.png", _image())
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputFileError, match="file is not a folder"):
        write_image_atomic(tmp_path / "file" / "x.png", _image())


def test_write_into_read_only_folder(tmp_path: Path, monkeypatch) -> None:
    from tests.as_non_root import install_with

    install_with(monkeypatch)  # folder bits enforced as for an ordinary user, also under root
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputFileError, match=f"output folder {locked} is not writable"):
            write_image_atomic(locked / "x.png", _image())
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o700)
    assert write_image_atomic(locked / "x.png", _image()).exists()
