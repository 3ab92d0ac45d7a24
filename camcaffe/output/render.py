"""Drawing CAM overlays and writing image files safely."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from camcaffe.errors import ImageError, InputFileError
from camcaffe.explain.cam import CamInputError

BOX_COLOR_BGR = (0, 255, 0)
TEXT_COLOR_BGR = (255, 255, 255)
STRIP_COLOR_BGR = (0, 0, 0)


def heatmap(cam01: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """JET colour map of a [0, 1] map (values outside are clipped, NaN -> 0), as uint8 HxWx3 BGR.

    size = (H, W) resizes the map bilinearly first."""
    cam = np.nan_to_num(np.asarray(cam01, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if cam.ndim != 2 or cam.size == 0:
        raise CamInputError(f"cam shape {cam.shape} must be a non-empty (H, W) map")
    if size is not None and cam.shape != tuple(size):
        cam = cv2.resize(cam, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    levels = np.round(np.clip(cam, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def _as_bgr_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise CamInputError(f"overlay needs a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    raise CamInputError(f"overlay needs an HxWx3 BGR image, got shape {img.shape}")


def text_strip(width: int, text: str) -> np.ndarray:
    """A dark strip `width` pixels wide with `text` in white, sized to the text (uint8 H×W×3 BGR)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = float(np.clip(width / 640.0, 0.35, 1.5))
    thickness = max(1, round(scale * 1.5))
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    if text_w > width - 8 and text_w > 0:  # shrink long text to fit, down to a readable minimum
        scale = max(0.3, scale * (width - 8) / text_w)
        thickness = max(1, round(scale * 1.5))
        (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = max(3, text_h // 3)
    strip = np.empty((text_h + baseline + 2 * pad, width, 3), np.uint8)
    strip[:] = STRIP_COLOR_BGR
    cv2.putText(strip, text, (pad, pad + text_h), font, scale, TEXT_COLOR_BGR, thickness, cv2.LINE_AA)
    return strip


def overlay(
    image_bgr_uint8: np.ndarray,
    cam01: np.ndarray,
    alpha: float = 0.5,
    text: str | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Blend a JET heatmap of cam01 ([0, 1], resized to the image) over the image; uint8 HxWx3 BGR.

    alpha is the heatmap's weight (0 = image only, 1 = heatmap only). text (e.g. "cup 0.87 · CAM") is written on
    a dark strip added ABOVE the photo, so it hides none of it (the result is then taller than the image);
    box = (x0, y0, x1, y1), inclusive pixels of the photo, is drawn as a rectangle."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise CamInputError(f"overlay alpha {alpha} must lie in [0, 1]")
    image = _as_bgr_uint8(image_bgr_uint8)
    height, width = image.shape[:2]
    colored = heatmap(cam01, (height, width))
    out = cv2.addWeighted(image, 1.0 - float(alpha), colored, float(alpha), 0.0)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        thickness = max(2, round(min(height, width) / 150))
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR_BGR, thickness)
    if text:
        out = np.concatenate([text_strip(width, text), out])
    return out


def _file_mode(target: Path) -> int:
    """Keep an existing file's permissions; new files get rw-r--r-- (mkstemp would leave rw-------)."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o644


def write_image_atomic(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Encode img by the path's extension and write it atomically (temporary file in the same folder, then
    os.replace), so readers never see a half-written file. Returns the path."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputFileError(f"output folder {folder} {what}; create it first")
    suffix = target.suffix.lower()
    if not suffix:
        raise InputFileError(f"{target} has no file extension; use .png or .jpg")
    try:
        ok, encoded = cv2.imencode(suffix, np.asarray(img))
    except cv2.error:
        ok, encoded = False, None
    if not ok or encoded is None:
        raise ImageError(
            f"cannot encode an image of shape {np.shape(img)} as {suffix} for {target}; use .png or .jpg"
        )
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputFileError(
            f"output folder {folder} is not writable ({exc.strerror or exc}); choose another"
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # POSIX
                os.fchmod(handle.fileno(), _file_mode(target))
            handle.write(encoded.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:  # Ctrl-C included: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise InputFileError(
                f"cannot write {target} in {folder} ({exc.strerror or exc}); check the folder"
            ) from None
        raise
    return target
