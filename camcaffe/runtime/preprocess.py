"""Image loading and preprocessing with the semantics of the classic `caffe.io` module.

Everything a Caffe deploy script did before `net.forward()` is reproduced here with numpy and OpenCV only:

* `load_image` decodes like `caffe.io.load_image` (scikit-image `imread` + `img_as_float`): RGB float32 in
  [0, 1], greyscale tiled to 3 channels, alpha dropped, EXIF orientation ignored.
* `resize_image` is `caffe.io.resize_image`: min/max normalise, `skimage.transform.resize(order=1,
  mode='constant', anti_aliasing=False)` (that is `scipy.ndimage.zoom(order=1, mode='grid-constant', cval=0,
  grid_mode=True)`: pixel-centre mapping, zeros outside the image take part at the borders), de-normalise.
* `oversample` is `caffe.io.oversample` (4 corners + centre, then their mirrors).
* `Transformer` is `caffe.io.Transformer` (resize, transpose, channel swap, raw scale, mean, input scale).
* `load_mean_file` reads `.npy` and `.binaryproto` mean files.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from camcaffe.caffe.wire import (
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    VARINT,
    WireError,
    iter_fields,
    unpack_varints,
)
from camcaffe.errors import CaffeFormatError, ImageError, InputFileError, LimitError

MAX_IMAGE_PIXELS = 178_956_970
"""Largest accepted width x height; the environment variable CAMCAFFE_MAX_IMAGE_PIXELS overrides it."""

MAX_IMAGE_PIXELS_ENV = "CAMCAFFE_MAX_IMAGE_PIXELS"

# scikit-image's rgb2gray weights (ITU-R BT.709), used by caffe.io.load_image(color=False).
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


class PreprocessError(CaffeFormatError, ValueError):
    """A preprocessing setting does not fit the net input (wrong length, shape or name).

    It is also a ValueError, which is what `caffe.io.Transformer` raised, so legacy scripts keep working."""


# ----------------------------------------------------------------------------------------------------------
# Decoding


def max_image_pixels() -> int:
    """The pixel limit: CAMCAFFE_MAX_IMAGE_PIXELS when set (a positive integer), else MAX_IMAGE_PIXELS."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if raw is None or not raw.strip():
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw.strip())
    except ValueError:
        raise LimitError(
            f"{MAX_IMAGE_PIXELS_ENV}={raw!r} is not an integer; set it to a pixel count"
        ) from None
    if value <= 0:
        raise LimitError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r} must be a positive pixel count")
    return value


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the first SOF marker of a JPEG stream, or None when there is none."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return height, width
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + ((bits >> 14) & 0x3FFF), 1 + (bits & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    tokens: list[bytes] = []
    for line in data[2:512].splitlines():
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 2:
            break
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    return int(tokens[1]), int(tokens[0])


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """(height, width) read cheaply from the header of a PNG, JPEG, GIF, BMP, WebP or PNM file.

    Returns None for other formats or unreadable headers; the caller then checks after decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return height, width
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return _pnm_size(data)
    return None


def _check_pixels(path: str | os.PathLike, height: int, width: int) -> None:
    limit = max_image_pixels()
    if height * width > limit:
        raise ImageError(
            f"{path}: {width}x{height} = {height * width} pixels exceeds the limit of {limit}; "
            f"downscale the image or raise {MAX_IMAGE_PIXELS_ENV}"
        )


def _read_bytes(path: str | os.PathLike) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{path}: no such image file; check the path")
    if p.is_dir():
        raise InputFileError(f"{path}: is a folder, not an image file")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise InputFileError(
            f"{path}: cannot be read ({exc.strerror or exc}); check its permissions"
        ) from None
    if data.size == 0:
        raise ImageError(f"{path}: is an empty (zero-byte) file; replace it with a valid image")
    return data


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as stored (cv2.IMREAD_UNCHANGED): uint8/uint16/float, HxW or HxWxC, BGR(A) order.

    Refuses zero-byte, undecodable and oversized files with ImageError; the header size is checked before
    the pixels are decoded for the common formats."""
    return decode_image_bytes(_read_bytes(path), path)


def decode_image_bytes(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """decode_image on the bytes of a file already read (uint8 array); `path` names it in errors."""
    if data.size == 0:
        raise ImageError(f"{path}: is empty (zero bytes); give a valid image")
    size = image_size_from_header(data[:65536].tobytes())
    if size is not None:
        _check_pixels(path, *size)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError(
            f"{path}: cannot be decoded as an image (not an image, unsupported format, or truncated); "
            "re-export it as PNG or JPEG"
        )
    _check_pixels(path, image.shape[0], image.shape[1])
    return image


def _to_unit_float(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """skimage.img_as_float semantics: uint8 / 255, uint16 / 65535, floats unchanged (as float64)."""
    # float32 throughout: caffe.io.load_image returns float32 anyway (at most 1 ulp from float64 then cast)
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 65535.0)
    if image.dtype in (np.float32, np.float64):
        return image.astype(np.float32)
    raise ImageError(f"{path}: pixel type {image.dtype} is not supported; save it as 8- or 16-bit PNG/JPEG")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """HxWxC BGR(A)/grey(+alpha) from OpenCV -> HxW grey or HxWx3 RGB, alpha dropped."""
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 2:  # grey + alpha
        return image[:, :, 0]
    return image[:, :, 2::-1]  # BGR(A) -> RGB


def load_image(path: str | os.PathLike, color: bool = True) -> np.ndarray:
    """Load an image like caffe.io.load_image: float32 HxWx3 RGB in [0, 1] (HxWx1 when color=False).

    Greyscale files are tiled to 3 channels, alpha is dropped (with color=False, RGBA is composited over
    white first, as scikit-image does), 16-bit files are scaled by 65535, EXIF orientation is ignored."""
    return image_from_decoded(decode_image(path), path, color)


def image_from_decoded(raw: np.ndarray, path: str | os.PathLike, color: bool = True) -> np.ndarray:
    """load_image's result from the pixels decode_image returned for `path`."""
    unit = _to_unit_float(_to_rgb(raw), path)
    if unit.ndim == 3 and not color:
        if raw.ndim == 3 and raw.shape[2] == 4:
            # skimage's imread(as_gray=True) composites RGBA over white (rgba2rgb) before rgb2gray
            alpha = _to_unit_float(raw[:, :, 3:4], path)
            unit = unit * alpha + (1.0 - alpha)
        unit = unit @ _GRAY_WEIGHTS
    if unit.ndim == 2:
        unit = unit[:, :, np.newaxis]
        if color:
            unit = np.tile(unit, (1, 1, 3))
    return np.ascontiguousarray(unit, dtype=np.float32)


def load_image_bgr_uint8(path: str | os.PathLike) -> np.ndarray:
    """The same pixels as load_image, as uint8 HxWx3 BGR for drawing (16-bit is rounded to 8-bit)."""
    return display_pixels(decode_image(path), path)


def display_pixels(raw: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """load_image_bgr_uint8 from the pixels decode_image returned for `path`."""
    if raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[2] == 3:
        return raw
    rgb = _to_rgb(raw)
    if rgb.dtype == np.uint16:
        rgb = np.round(rgb.astype(np.float64) / 257.0).astype(np.uint8)
    elif rgb.dtype != np.uint8:
        rgb = np.round(np.clip(_to_unit_float(rgb, path), 0.0, 1.0) * 255.0).astype(np.uint8)
    if rgb.ndim == 2:
        return np.ascontiguousarray(np.repeat(rgb[:, :, np.newaxis], 3, axis=2))
    return np.ascontiguousarray(rgb[:, :, ::-1])


# ----------------------------------------------------------------------------------------------------------
# Resizing


def _zoom_axis_linear(array: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One axis of scipy.ndimage.zoom(order=1, mode='grid-constant', cval=0, grid_mode=True), in float64.

    Output pixel centre j maps to x = (j + 0.5) * n_in / n_out - 0.5, which lies between samples floor(x)
    and floor(x) + 1, always within -1..n_in; a sample outside 0..n_in-1 is the constant 0 and still takes
    its share of the weight."""
    n_in = array.shape[axis]
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(x)
    frac = x - left
    shape = [1] * array.ndim
    shape[axis] = n_out
    out = np.zeros(array.shape[:axis] + (n_out,) + array.shape[axis + 1 :], dtype=np.float64)
    for index, weight in ((left.astype(np.int64), 1.0 - frac), (left.astype(np.int64) + 1, frac)):
        inside = (index >= 0) & (index < n_in)
        samples = np.take(array, np.clip(index, 0, n_in - 1), axis=axis).astype(np.float64)
        out += samples * np.where(inside, weight, 0.0).reshape(shape)
    return out


def _resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Separable linear zoom of an HxWxC array (float64 arithmetic)."""
    return _zoom_axis_linear(_zoom_axis_linear(image, height, 0), width, 1)


def _resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Order-0 zoom with grid_mode: the input sample nearest to each output pixel centre."""

    def index(n_in: int, n_out: int) -> np.ndarray:
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        return np.clip(np.floor(x + 0.5).astype(np.int64), 0, n_in - 1)

    return image[index(image.shape[0], height)][:, index(image.shape[1], width)]


def _check_dims(new_dims: Sequence[int]) -> tuple[int, int]:
    dims = tuple(int(d) for d in new_dims)
    if len(dims) != 2 or min(dims) <= 0:
        raise PreprocessError(f"resize size {tuple(new_dims)} must be two positive integers (height, width)")
    return dims[0], dims[1]


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """caffe.io.resize_image: resize an HxWxK image to new_dims = (H, W), returning float32 HxWxK.

    The image is min/max normalised to [0, 1], resized with scikit-image's `resize(order=interp_order,
    mode='constant', anti_aliasing=False)` semantics and de-normalised; a constant image is filled with its
    value. interp_order is 0 (nearest) or 1 (bilinear)."""
    height, width = _check_dims(new_dims)
    if interp_order not in (0, 1):
        raise PreprocessError(
            f"interp_order={interp_order} is not supported; use 0 (nearest) or 1 (bilinear)"
        )
    image = np.asarray(im)
    if image.ndim != 3 or 0 in image.shape:
        raise PreprocessError(f"resize_image needs an HxWxK image, got shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    im_min, im_max = image.min(), image.max()
    if not im_max > im_min:
        return np.full((height, width, image.shape[2]), im_min, dtype=np.float32)
    im_std = (image - im_min) / (im_max - im_min)
    if interp_order == 1 and height <= image.shape[0] and width <= image.shape[1] and image.shape[2] <= 4:
        # Shrinking both axes, every sample position (j + 0.5) * n_in / n_out - 0.5 lies inside the image,
        # so the zero border of 'grid-constant' never takes part and OpenCV's bilinear resize computes the
        # same values (in float32, without full-size float64 copies).
        resized = cv2.resize(im_std, (width, height), interpolation=cv2.INTER_LINEAR)
        if resized.ndim == 2:
            resized = resized[:, :, np.newaxis]
    elif interp_order == 1:
        resized = _resize_linear(im_std, height, width)
    else:
        resized = _resize_nearest(im_std, height, width)
    resized_std = np.clip(resized, 0.0, 1.0).astype(im_std.dtype)
    return (resized_std * (im_max - im_min) + im_min).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Oversampling


def oversample(images: Sequence[np.ndarray] | np.ndarray, crop_dims: Sequence[int]) -> np.ndarray:
    """caffe.io.oversample: 10 crops per HxWxK image (4 corners, centre, then the same 5 mirrored).

    Returns float32 (10 * N, crop_h, crop_w, K) in caffe.io's order."""
    if len(images) == 0:
        raise PreprocessError("oversample needs at least one image")
    crop_h, crop_w = _check_dims(crop_dims)
    shape = np.asarray(images[0]).shape
    if len(shape) != 3:
        raise PreprocessError(f"oversample needs HxWxK images, got shape {shape}")
    for i, im in enumerate(images):
        if np.asarray(im).shape != shape:
            raise PreprocessError(
                f"oversample needs images of one shape: image 0 is {shape}, image {i} is "
                f"{np.asarray(im).shape}; "
                "resize them first"
            )
    height, width = shape[0], shape[1]
    if crop_h > height or crop_w > width:
        raise PreprocessError(
            f"crop {crop_h}x{crop_w} is larger than the {height}x{width} images; resize first"
        )
    # caffe.io computes the centre crop in floats and truncates each bound to int.
    centre_top = int(height / 2.0 - crop_h / 2.0)
    centre_left = int(width / 2.0 - crop_w / 2.0)
    centre_bottom = int(height / 2.0 + crop_h / 2.0)
    centre_right = int(width / 2.0 + crop_w / 2.0)
    corners = [(0, 0), (0, width - crop_w), (height - crop_h, 0), (height - crop_h, width - crop_w)]
    boxes = [(top, left, top + crop_h, left + crop_w) for top, left in corners]
    boxes.append((centre_top, centre_left, centre_bottom, centre_right))
    crops = np.empty((10 * len(images), crop_h, crop_w, shape[2]), dtype=np.float32)
    for n, im in enumerate(images):
        arr = np.asarray(im)
        for i, (top, left, bottom, right) in enumerate(boxes):
            crops[10 * n + i] = arr[top:bottom, left:right, :]
        crops[10 * n + 5 : 10 * n + 10] = crops[10 * n : 10 * n + 5, :, ::-1, :]
    return crops


# ----------------------------------------------------------------------------------------------------------
# Transformer


class Transformer:
    """caffe.io.Transformer: turn HxWxK images into the C x H x W blobs a Caffe net takes.

    inputs maps each input name to its blob shape (N, C, H, W). preprocess applies, in caffe.io's order:
    resize to (H, W) when needed, transpose, channel swap, raw scale, mean subtraction, input scale."""

    def __init__(self, inputs: dict[str, Sequence[int]]):
        if not inputs:
            raise PreprocessError("Transformer needs at least one input, e.g. {'data': (1, 3, 224, 224)}")
        self.inputs: dict[str, tuple[int, ...]] = {}
        for name, shape in inputs.items():
            dims = tuple(int(d) for d in shape)
            if len(dims) < 3:
                raise PreprocessError(f"input '{name}' shape {tuple(shape)} must be (N, C, H, W)")
            self.inputs[name] = dims
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}
        self.std: dict[str, np.ndarray] = {}

    def _check_input(self, name: str) -> tuple[int, ...]:
        if name not in self.inputs:
            raise PreprocessError(f"'{name}' is not one of the net inputs: {', '.join(self.inputs)}")
        return self.inputs[name]

    def set_transpose(self, name: str, order: Sequence[int]) -> None:
        """Axis order to move an HxWxK image to KxHxW, usually (2, 0, 1)."""
        shape = self._check_input(name)
        order = tuple(int(i) for i in order)
        if len(order) != len(shape) - 1:
            raise PreprocessError(
                f"transpose order {order} for input '{name}' must have {len(shape) - 1} axes, e.g. (2, 0, 1)"
            )
        if sorted(order) != list(range(len(order))):
            raise PreprocessError(
                f"transpose order {order} for input '{name}' must be a permutation of 0..{len(order) - 1}"
            )
        self.transpose[name] = order

    def set_channel_swap(self, name: str, order: Sequence[int]) -> None:
        """Channel order after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        shape = self._check_input(name)
        order = tuple(int(i) for i in order)
        if len(order) != shape[1]:
            raise PreprocessError(
                f"channel swap {order} for input '{name}' must list {shape[1]} channels (the net's C)"
            )
        if sorted(order) != list(range(len(order))):
            raise PreprocessError(
                f"channel swap {order} for input '{name}' must be a permutation of 0..{len(order) - 1}"
            )
        self.channel_swap[name] = order

    def set_raw_scale(self, name: str, scale: float) -> None:
        """Multiplier applied to the [0, 1] image, e.g. 255 for nets trained on 0..255 pixels."""
        self._check_input(name)
        self.raw_scale[name] = _finite_scalar(scale, f"raw scale for input '{name}'")

    def set_input_scale(self, name: str, scale: float) -> None:
        """Multiplier applied after mean subtraction."""
        self._check_input(name)
        self.input_scale[name] = _finite_scalar(scale, f"input scale for input '{name}'")

    def set_std(self, name: str, std: Sequence[float]) -> None:
        """Per-channel divisor applied after mean subtraction, in the net's channel order (torchvision's
        Normalize(mean, std) on 0-1 RGB: --raw-scale 1, --mean 0.485,0.456,0.406, --std 0.229,0.224,0.225)."""
        shape = self._check_input(name)
        values = np.asarray(std, dtype=np.float64).reshape(-1)
        if values.shape[0] != shape[1]:
            raise PreprocessError(f"std has {values.shape[0]} values but input '{name}' has {shape[1]} channels")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise PreprocessError(f"std for input '{name}' must be positive finite numbers, got {values.tolist()}")
        self.std[name] = values.astype(np.float32)[:, np.newaxis, np.newaxis]

    def set_mean(self, name: str, mean: np.ndarray | Sequence[float]) -> None:
        """Per-channel mean vector (C,) or mean image (C, H, W) / (H, W), in the net's channel order.

        A mean image of another size is resized to the input size as caffe.io does."""
        shape = self._check_input(name)
        mean_arr = np.asarray(mean)
        if mean_arr.ndim == 1:
            if mean_arr.shape[0] != shape[1]:
                raise PreprocessError(
                    f"mean has {mean_arr.shape[0]} values but input '{name}' has {shape[1]} channels"
                )
            self.mean[name] = mean_arr[:, np.newaxis, np.newaxis]
            return
        if mean_arr.ndim == 2:
            mean_arr = mean_arr[np.newaxis]
        if mean_arr.ndim != 3:
            raise PreprocessError(f"mean shape {np.asarray(mean).shape} must be (C,), (H, W) or (C, H, W)")
        if mean_arr.shape[0] != shape[1]:
            raise PreprocessError(
                f"mean image has {mean_arr.shape[0]} channels but input '{name}' has {shape[1]}"
            )
        if mean_arr.shape[1:] != tuple(shape[2:]):
            mean_arr = _resize_mean(mean_arr, shape[2:])
        self.mean[name] = mean_arr

    def preprocess(self, name: str, image: np.ndarray) -> np.ndarray:
        """An HxWxK image -> float32 blob (C, H, W) for input `name`."""
        shape = self._check_input(name)
        caffe_in = np.array(image, dtype=np.float32)
        if caffe_in.ndim != 3:
            raise PreprocessError(
                f"preprocess needs an HxWxK image for input '{name}', got shape {caffe_in.shape}"
            )
        in_dims = tuple(shape[2:])
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if name in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[name])
        if name in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[name]), :, :]
        caffe_in = np.ascontiguousarray(caffe_in, dtype=np.float32)
        if name in self.raw_scale:
            caffe_in *= self.raw_scale[name]
        if name in self.mean:
            caffe_in -= self.mean[name]
        if name in self.std:
            caffe_in /= self.std[name]
        if name in self.input_scale:
            caffe_in *= self.input_scale[name]
        return caffe_in

    def preprocess_decoded(self, name: str, decoded: np.ndarray) -> np.ndarray | None:
        """preprocess(name, load_image(file)) straight from the file's decoded uint8 pixels, or None when
        this fast path does not apply (not 8-bit, would enlarge, no (2, 0, 1) transpose).

        Equal to the long way within float32 rounding (a few 1e-5 in 0-255 units): resizing is linear, so
        the min-max normalisation around caffe.io's resize and the 1/255 scaling are applied to the small
        result instead of to every pixel of the photo."""
        shape = self._check_input(name)
        if decoded.dtype != np.uint8 or self.transpose.get(name) != (2, 0, 1) or len(shape) != 4:
            return None
        if decoded.ndim == 3 and decoded.shape[2] in (3, 4):
            bgr = decoded[:, :, :3]
        elif decoded.ndim == 2 or (decoded.ndim == 3 and decoded.shape[2] in (1, 2)):
            bgr = decoded if decoded.ndim == 2 else decoded[:, :, 0]
        else:
            return None
        if shape[1] != 3:
            return None
        height, width = shape[2], shape[3]
        if bgr.shape[0] < height or bgr.shape[1] < width:
            return None
        low, high = (float(v) for v in cv2.minMaxLoc(bgr.reshape(bgr.shape[0], -1))[:2])
        if bgr.shape[:2] == (height, width):
            resized = bgr.astype(np.float32)
        elif high > low:
            resized = cv2.resize(bgr.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            np.clip(resized, low, high, out=resized)
        else:
            resized = np.full((height, width) + bgr.shape[2:], low, dtype=np.float32)
        if resized.ndim == 2:
            planes = np.repeat(resized[np.newaxis], 3, axis=0)
        else:
            planes = resized.transpose(2, 0, 1)[::-1]  # BGR -> RGB, as load_image gives
        return self._from_rgb255(name, planes)

    def preprocess_pixels(self, name: str, pixels: np.ndarray) -> np.ndarray:
        """The net input from 8-bit RGB pixels (H, W, 3) already at the input's size, as a framework that reads
        images with Pillow computes it: float32(pixel) * raw_scale / 255, then mean, std and input scale. With
        raw_scale 255 the pixels enter unchanged (no round trip through 1/255), so `x - mean` is bit for bit
        Keras's `preprocess_input`."""
        shape = self._check_input(name)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise PreprocessError(f"preprocess_pixels takes 8-bit RGB pixels (H, W, 3), got {pixels.shape}")
        if len(shape) != 4 or tuple(pixels.shape[:2]) != tuple(shape[2:]) or shape[1] != 3:
            raise PreprocessError(
                f"pixels of {pixels.shape[0]}x{pixels.shape[1]} do not fit the input '{name}' of shape {shape}"
            )
        return self._from_rgb255(name, pixels.transpose(2, 0, 1))

    def _from_rgb255(self, name: str, planes: np.ndarray) -> np.ndarray:
        """(3, H, W) RGB planes in 0..255 -> the net input: channel swap, raw scale, mean, std, input scale."""
        if name in self.channel_swap:
            planes = planes[list(self.channel_swap[name])]
        scale = np.float32(self.raw_scale.get(name, 1.0) / 255.0)
        caffe_in = np.ascontiguousarray(planes, dtype=np.float32)
        if scale != 1.0:
            caffe_in *= scale
        if name in self.mean:
            caffe_in -= self.mean[name]
        if name in self.std:
            caffe_in /= self.std[name]
        if name in self.input_scale:
            caffe_in *= self.input_scale[name]
        return caffe_in

    def deprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """Invert preprocess (except the resize): blob (C, H, W) or (1, C, H, W) -> HxWxK image."""
        self._check_input(name)
        decaf_in = np.array(data, dtype=np.float32).squeeze()
        if name in self.input_scale:
            decaf_in /= self.input_scale[name]
        if name in self.std:
            decaf_in *= self.std[name]
        if name in self.mean:
            decaf_in += self.mean[name]
        if name in self.raw_scale:
            decaf_in /= self.raw_scale[name]
        if name in self.channel_swap:
            decaf_in = decaf_in[np.argsort(self.channel_swap[name]), :, :]
        if name in self.transpose:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[name]))
        return decaf_in


def _finite_scalar(value: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PreprocessError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise PreprocessError(f"{what} must be finite, got {value!r}")
    return number


def _resize_mean(mean: np.ndarray, in_dims: Sequence[int]) -> np.ndarray:
    """caffe.io's resizing of a mean image to the input size (normalised, resized, de-normalised)."""
    m_min, m_max = mean.min(), mean.max()
    if not m_max > m_min:
        return np.full((mean.shape[0], *in_dims), m_min, dtype=np.float32)
    normal = (mean - m_min) / (m_max - m_min)
    resized = resize_image(normal.transpose(1, 2, 0), tuple(in_dims)).transpose(2, 0, 1)
    return (resized * (m_max - m_min) + m_min).astype(np.float32)


def caffe_imagenet_transformer(
    input_shape: Sequence[int],
    mean: np.ndarray | Sequence[float] | None = (104.0, 117.0, 123.0),
    raw_scale: float | None = 255.0,
    channel_swap: Sequence[int] | None = (2, 1, 0),
    input_scale: float | None = None,
    name: str = "data",
) -> Transformer:
    """The Transformer of the classic Caffe ImageNet scripts (BGR, 0..255, mean B,G,R = 104,117,123)."""
    transformer = Transformer({name: tuple(input_shape)})
    transformer.set_transpose(name, (2, 0, 1))
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if mean is not None:
        transformer.set_mean(name, np.asarray(mean, dtype=np.float64))
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    return transformer


def preprocess_batch(
    images: Sequence[np.ndarray], transformer: Transformer, name: str = "data"
) -> np.ndarray:
    """Stack transformer.preprocess(name, image) for each HxWxK image into a float32 (N, C, H, W) batch."""
    if len(images) == 0:
        raise PreprocessError("preprocess_batch needs at least one image")
    return np.stack([transformer.preprocess(name, image) for image in images]).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------
# Mean files


def load_mean_file(path: str | os.PathLike) -> np.ndarray:
    """Read a mean from `.npy` or `.binaryproto` as float32 (C, H, W); a leading batch dim of 1 is dropped.

    A `.npy` holding a 1-D per-channel vector (C,) is returned as it is."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise InputFileError(f"mean file {path} {what}; pass a .npy or .binaryproto file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        mean = _load_npy_mean(p)
    elif suffix in (".binaryproto", ".protobin", ".pb"):
        mean = _load_binaryproto_mean(p)
    else:
        raise CaffeFormatError(f"mean file {path} has an unknown extension; use .npy or .binaryproto")
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim == 2:
        mean = mean[np.newaxis]
    if mean.ndim not in (1, 3) or mean.size == 0:
        raise CaffeFormatError(
            f"mean file {path} holds shape {mean.shape}; expected (C, H, W), (1, C, H, W) or (C,)"
        )
    if not np.all(np.isfinite(mean)):
        raise CaffeFormatError(f"mean file {path} contains NaN or infinite values")
    return np.ascontiguousarray(mean, dtype=np.float32)


def _load_npy_mean(path: Path) -> np.ndarray:
    try:
        mean = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CaffeFormatError(f"mean file {path} is not a readable .npy array ({exc})") from None
    if not isinstance(mean, np.ndarray) or not np.issubdtype(mean.dtype, np.number):
        raise CaffeFormatError(f"mean file {path} does not hold a numeric array")
    return mean.astype(np.float32)


def _load_binaryproto_mean(path: Path) -> np.ndarray:
    buf = memoryview(path.read_bytes())
    if len(buf) == 0:
        raise CaffeFormatError(f"mean file {path} is empty; regenerate it with compute_image_mean")
    try:
        return parse_blob_proto(buf)
    except (WireError, ValueError) as exc:
        raise CaffeFormatError(f"mean file {path} is not a valid BlobProto: {exc}") from None


def parse_blob_proto(buf: memoryview | bytes) -> np.ndarray:
    """Decode a serialized caffe BlobProto into a float32 array of its shape (raises ValueError if malformed).

    Reads num/channels/height/width (fields 1-4) or shape (7), and data (5, packed or not) or double_data
    (8)."""
    buf = memoryview(buf)
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    shape: list[int] | None = None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for field, wire_type, value, length in iter_fields(buf, 0, len(buf)):
        if field in legacy and wire_type == VARINT:
            legacy[field] = value
        elif field == 7 and wire_type == LENGTH_DELIMITED:
            shape = _parse_blob_shape(buf, value, length)
        elif field == 5 and wire_type == LENGTH_DELIMITED:
            if length % 4:
                raise ValueError(f"packed float data of {length} bytes is not a multiple of 4")
            floats.append(np.frombuffer(buf[value : value + length], dtype="<f4"))
        elif field == 5 and wire_type == FIXED32:
            floats.append(np.frombuffer(buf[value : value + 4], dtype="<f4"))
        elif field == 8 and wire_type == LENGTH_DELIMITED:
            if length % 8:
                raise ValueError(f"packed double data of {length} bytes is not a multiple of 8")
            doubles.append(np.frombuffer(buf[value : value + length], dtype="<f8"))
        elif field == 8 and wire_type == FIXED64:
            doubles.append(np.frombuffer(buf[value : value + 8], dtype="<f8"))
    if shape is None:
        shape = [legacy[1], legacy[2], legacy[3], legacy[4]]
    if floats:
        data = np.concatenate(floats).astype(np.float32)
    elif doubles:
        data = np.concatenate(doubles).astype(np.float32)
    else:
        raise ValueError("it holds no data (fields 5 data / 8 double_data are empty)")
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ValueError(f"shape {tuple(shape)} does not match its {data.size} values")
    return data.reshape(shape)


def _parse_blob_shape(buf: memoryview, start: int, length: int) -> list[int]:
    dims: list[int] = []
    for field, wire_type, value, size in iter_fields(buf, start, start + length):
        if field != 1:
            continue
        if wire_type == LENGTH_DELIMITED:
            dims.extend(unpack_varints(buf, value, size))
        elif wire_type == VARINT:
            dims.append(value)
    return [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
