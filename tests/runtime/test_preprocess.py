"""caffe.io semantics of camcaffe.preprocess, checked against pycaffe's stored tensors and hand-made cases."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from camcaffe.errors import CaffeFormatError, ImageError, InputFileError, LimitError
from camcaffe.runtime.preprocess import (
    MAX_IMAGE_PIXELS,
    PreprocessError,
    Transformer,
    caffe_imagenet_transformer,
    image_size_from_header,
    load_image,
    load_image_bgr_uint8,
    load_mean_file,
    max_image_pixels,
    oversample,
    preprocess_batch,
    resize_image,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

# Measured max |ours - pycaffe| in 0..255 units: 1.5e-5 (one float32 ulp near 128) or 0 for every image,
# PNG and JPEG alike (OpenCV's and Pillow's libjpeg-turbo decode these files identically).
GOLDEN_TOLERANCE = 1e-4

GOLDEN_SETS = [("real_squeezenet_v1.0_dc", 227), ("real_open_nsfw", 224)]


def _golden_cases() -> list[tuple[str, int, str]]:
    cases = []
    for folder, size in GOLDEN_SETS:
        archive = GOLDEN / folder / "real_outputs.npz"
        if not archive.is_file():
            continue
        with np.load(archive) as npz:
            cases.extend((folder, size, str(rel)) for rel in npz["images"])
    return cases


def _stem(rel: str) -> str:
    stem = Path(rel).stem
    return "cam_" + stem if rel.startswith("cam_reference/") else stem


@pytest.mark.skipif(not _golden_cases(), reason="../shared/golden real_outputs.npz not available")
@pytest.mark.parametrize(("folder", "size", "rel"), _golden_cases() or [("none", 0, "none")])
def test_full_preprocessing_matches_pycaffe(folder: str, size: int, rel: str) -> None:
    image_path = DATA / rel
    if not image_path.is_file():
        pytest.skip(f"{image_path} not available")
    with np.load(GOLDEN / folder / "real_outputs.npz") as npz:
        expected = npz[f"{_stem(rel)}/input"][0]
    transformer = caffe_imagenet_transformer((1, 3, size, size))
    got = transformer.preprocess("data", load_image(image_path))
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= GOLDEN_TOLERANCE


# ----------------------------------------------------------------------------------------------------------
# resize_image


def _reference_zoom(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-pixel bilinear sampling at pixel centres, zeros outside the image (independent of the module)."""
    in_h, in_w, channels = image.shape

    def sample(y: int, x: int) -> np.ndarray:
        if 0 <= y < in_h and 0 <= x < in_w:
            return image[y, x].astype(np.float64)
        return np.zeros(channels)

    out = np.zeros((height, width, channels))
    for i in range(height):
        y = (i + 0.5) * in_h / height - 0.5
        y0 = int(np.floor(y))
        ty = y - y0
        for j in range(width):
            x = (j + 0.5) * in_w / width - 0.5
            x0 = int(np.floor(x))
            tx = x - x0
            out[i, j] = (
                (1 - ty) * (1 - tx) * sample(y0, x0)
                + (1 - ty) * tx * sample(y0, x0 + 1)
                + ty * (1 - tx) * sample(y0 + 1, x0)
                + ty * tx * sample(y0 + 1, x0 + 1)
            )
    return out


def test_resize_hand_computed_edges_take_zero_padding_in_normalised_space() -> None:
    # [2, 6] normalises to [0, 1]; 2 -> 4 samples at x = -0.25, 0.25, 0.75, 1.25 with zeros outside:
    # [0.75*0, 0.75*0 + 0.25*1, 0.25*0 + 0.75*1, 0.75*1] = [0, .25, .75, .75] -> 2 + 4 * that.
    image = np.array([[[2.0], [6.0]]], dtype=np.float32)
    out = resize_image(image, (1, 4))
    np.testing.assert_allclose(out[0, :, 0], [2.0, 3.0, 5.0, 5.0], atol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(("shape", "new"), [((5, 7, 3), (11, 4)), ((9, 6, 1), (4, 13)), ((3, 3, 3), (3, 3))])
def test_resize_matches_independent_bilinear(shape: tuple[int, int, int], new: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(-3.0, 5.0, shape).astype(np.float32)
    lo, hi = image.min(), image.max()
    expected = _reference_zoom((image - lo) / (hi - lo), *new) * (hi - lo) + lo
    np.testing.assert_allclose(resize_image(image, new), expected, atol=1e-5)


def test_resize_constant_image_is_filled() -> None:
    out = resize_image(np.full((4, 5, 3), 0.25, np.float32), (7, 2))
    assert out.shape == (7, 2, 3)
    assert np.all(out == np.float32(0.25))


def test_resize_nearest_and_bad_arguments() -> None:
    image = np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    np.testing.assert_array_equal(resize_image(image, (1, 2), interp_order=0)[0, :, 0], [1.0, 3.0])
    with pytest.raises(PreprocessError):
        resize_image(image, (1, 2), interp_order=3)
    with pytest.raises(PreprocessError):
        resize_image(image, (0, 2))
    with pytest.raises(ValueError):
        resize_image(np.zeros((4, 4)), (2, 2))


# ----------------------------------------------------------------------------------------------------------
# load_image


def _write(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def test_load_color_png_is_rgb_unit_float(tmp_path: Path) -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 255  # B, G, R
    image = load_image(_write(tmp_path / "c.png", bgr))
    assert image.dtype == np.float32 and image.shape == (2, 3, 3)
    np.testing.assert_array_equal(image[0, 0], np.float32(np.array([255, 20, 10]) / 255.0))


def test_load_gray_alpha_16bit_and_color_false(tmp_path: Path) -> None:
    gray = np.array([[0, 128, 255]], np.uint8)
    tiled = load_image(_write(tmp_path / "g.png", gray))
    assert tiled.shape == (1, 3, 3)
    assert np.all(tiled[..., 0] == tiled[..., 2])
    assert load_image(tmp_path / "g.png", color=False).shape == (1, 3, 1)

    bgra = np.dstack([np.full((2, 2), 30), np.full((2, 2), 60), np.full((2, 2), 90), np.full((2, 2), 7)])
    rgb = load_image(_write(tmp_path / "a.png", bgra.astype(np.uint8)))
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0] * 255, [90, 60, 30], atol=1e-4)

    deep = np.array([[0, 65535, 32768]], np.uint16)
    scaled = load_image(_write(tmp_path / "d.png", deep))
    np.testing.assert_allclose(scaled[0, :, 0], [0.0, 1.0, 32768 / 65535], atol=1e-7)

    bgr = np.zeros((1, 1, 3), np.uint8)
    bgr[0, 0] = (255, 0, 0)  # pure blue
    one = load_image(_write(tmp_path / "b.png", bgr), color=False)
    np.testing.assert_allclose(one[0, 0, 0], 0.0721, atol=1e-6)  # skimage rgb2gray weight of blue

    half_blue = np.array([[[255, 0, 0, 51]]], np.uint8)  # BGRA: blue at alpha 0.2, composited over white
    gray = load_image(_write(tmp_path / "hb.png", half_blue), color=False)
    np.testing.assert_allclose(gray[0, 0, 0], 0.2 * 0.0721 + 0.8, atol=1e-6)


def test_load_path_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    folder = tmp_path / "dossier été 写真"
    folder.mkdir()
    path = _write(folder / "chat noir.jpg", np.full((8, 8, 3), 200, np.uint8))
    assert load_image(path).shape == (8, 8, 3)
    assert load_image_bgr_uint8(path).shape == (8, 8, 3)


def test_load_bgr_uint8_matches_opencv(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = _write(tmp_path / "x.png", bgr)
    np.testing.assert_array_equal(load_image_bgr_uint8(path), bgr)
    gray_path = _write(tmp_path / "y.png", bgr[..., 0])
    np.testing.assert_array_equal(load_image_bgr_uint8(gray_path), np.repeat(bgr[..., :1], 3, axis=2))


def test_refuses_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="zero-byte"):
        load_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageError, match="cannot be decoded"):
        load_image(text)
    whole = _write(tmp_path / "whole.png", np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(truncated)
    with pytest.raises(InputFileError, match="no such"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputFileError, match="folder"):
        load_image(tmp_path)


def test_pixel_limit_checked_from_header_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PNG header claiming 100000 x 100000 pixels with no image data: refused on size, not on decoding.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(bomb)
    small = _write(tmp_path / "small.jpg", np.zeros((10, 20, 3), np.uint8))
    monkeypatch.setenv("CAMCAFFE_MAX_IMAGE_PIXELS", "199")
    assert max_image_pixels() == 199
    with pytest.raises(ImageError, match="200 pixels exceeds the limit of 199"):
        load_image(small)
    monkeypatch.setenv("CAMCAFFE_MAX_IMAGE_PIXELS", "200")
    assert load_image(small).shape == (10, 20, 3)
    monkeypatch.setenv("CAMCAFFE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(LimitError):
        max_image_pixels()
    monkeypatch.delenv("CAMCAFFE_MAX_IMAGE_PIXELS")
    assert max_image_pixels() == MAX_IMAGE_PIXELS == 178_956_970


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".ppm", ".pgm"])
def test_header_sizes(tmp_path: Path, suffix: str) -> None:
    image = np.zeros((37, 53, 3), np.uint8) if suffix != ".pgm" else np.zeros((37, 53), np.uint8)
    ok, data = cv2.imencode(suffix, image)
    if not ok:
        pytest.skip(f"this OpenCV cannot write {suffix}")
    assert image_size_from_header(data.tobytes()) == (37, 53)


def test_header_size_of_progressive_jpeg_and_gif() -> None:
    ok, data = cv2.imencode(".jpg", np.zeros((21, 34, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and image_size_from_header(data.tobytes()) == (21, 34)
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\0" * 8
    assert image_size_from_header(gif) == (480, 640)
    assert image_size_from_header(b"II*\0 tiff is decoded first") is None


# ----------------------------------------------------------------------------------------------------------
# oversample


def test_oversample_order_matches_caffe_io() -> None:
    image = np.arange(7 * 9 * 2, dtype=np.float32).reshape(7, 9, 2)
    crops = oversample([image, image + 1000], (4, 5))
    assert crops.shape == (20, 4, 5, 2) and crops.dtype == np.float32
    # centre: 7/2 - 2 = 1.5 -> 1 .. 3.5 + 2 = 5.5 -> 5; 9/2 - 2.5 = 2 .. 7
    expected = [image[0:4, 0:5], image[0:4, 4:9], image[3:7, 0:5], image[3:7, 4:9], image[1:5, 2:7]]
    for i, crop in enumerate(expected):
        np.testing.assert_array_equal(crops[i], crop)
        np.testing.assert_array_equal(crops[5 + i], crop[:, ::-1])
        np.testing.assert_array_equal(crops[10 + i], crop + 1000)
        np.testing.assert_array_equal(crops[15 + i], crop[:, ::-1] + 1000)


def test_oversample_rejects_bad_input() -> None:
    with pytest.raises(PreprocessError, match="larger"):
        oversample([np.zeros((4, 4, 3))], (5, 4))
    with pytest.raises(PreprocessError, match="one shape"):
        oversample([np.zeros((4, 4, 3)), np.zeros((5, 4, 3))], (2, 2))


# ----------------------------------------------------------------------------------------------------------
# Transformer


def test_transformer_order_of_operations() -> None:
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, (4, 5, 3)).astype(np.float32)
    t = Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    got = t.preprocess("data", image)
    expected = (image.transpose(2, 0, 1)[::-1] * 255.0 - np.array([104.0, 117.0, 123.0])[:, None, None]) * 0.5
    assert got.dtype == np.float32 and got.shape == (3, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", got[np.newaxis]), image, atol=1e-5)


def test_transformer_resizes_input_and_mean_image() -> None:
    t = Transformer({"data": (1, 3, 6, 6)})
    t.set_transpose("data", (2, 0, 1))
    image = np.random.default_rng(4).uniform(0, 1, (10, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(t.preprocess("data", image), resize_image(image, (6, 6)).transpose(2, 0, 1))

    mean = np.random.default_rng(5).uniform(90, 130, (3, 9, 9)).astype(np.float32)
    t.set_mean("data", mean)
    lo, hi = mean.min(), mean.max()
    expected_mean = resize_image(((mean - lo) / (hi - lo)).transpose(1, 2, 0), (6, 6)).transpose(2, 0, 1)
    np.testing.assert_allclose(t.mean["data"], expected_mean * (hi - lo) + lo, rtol=1e-6)


def test_transformer_validates_arguments() -> None:
    t = Transformer({"data": (1, 3, 8, 8)})
    with pytest.raises(PreprocessError, match="3 channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(PreprocessError, match="3 axes"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(PreprocessError, match="permutation"):
        t.set_transpose("data", (0, 0, 1))
    with pytest.raises(PreprocessError, match="4 values"):
        t.set_mean("data", np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(PreprocessError, match="channels"):
        t.set_mean("data", np.zeros((1, 8, 8)))
    with pytest.raises(PreprocessError, match="not one of the net inputs: data"):
        t.set_raw_scale("image", 255)
    with pytest.raises(PreprocessError, match="finite"):
        t.set_input_scale("data", float("nan"))
    # typed for the CLI and still a ValueError for legacy caffe.io scripts
    assert issubclass(PreprocessError, CaffeFormatError) and issubclass(PreprocessError, ValueError)


def test_preprocess_batch_stacks() -> None:
    t = caffe_imagenet_transformer((2, 3, 4, 4))
    images = [np.full((4, 4, 3), v, np.float32) for v in (0.0, 1.0)]
    batch = preprocess_batch(images, t)
    assert batch.shape == (2, 3, 4, 4) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[1, :, 0, 0], [255 - 104, 255 - 117, 255 - 123])


# ----------------------------------------------------------------------------------------------------------
# Mean files


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packed(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def test_binaryproto_with_shape_and_packed_data(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.float32) * 1.5
    shape = _packed(1, b"".join(_varint(d) for d in (1, 3, 2, 4)))
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(_packed(5, values.astype("<f4").tobytes()) + _packed(7, shape))
    mean = load_mean_file(path)
    assert mean.shape == (3, 2, 4) and mean.dtype == np.float32
    np.testing.assert_array_equal(mean.reshape(-1), values)


def test_binaryproto_legacy_dims_unpacked_floats_and_doubles(tmp_path: Path) -> None:
    dims = b"".join(_key(f, 0) + _varint(v) for f, v in ((1, 1), (2, 3), (3, 1), (4, 2)))
    floats = b"".join(_key(5, 5) + struct.pack("<f", v) for v in range(6))
    path = tmp_path / "legacy.binaryproto"
    path.write_bytes(dims + floats)
    np.testing.assert_array_equal(load_mean_file(path), np.arange(6, dtype=np.float32).reshape(3, 1, 2))
    doubles = _packed(8, np.array([104.0, 1, 117.0, 2, 123.0, 3], "<f8").tobytes())
    path.write_bytes(dims + doubles)
    np.testing.assert_array_equal(load_mean_file(path)[:, 0, 0], [104.0, 117.0, 123.0])


def test_mean_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "short.binaryproto"
    dims = b"".join(_key(f, 0) + _varint(v) for f, v in ((1, 1), (2, 3), (3, 2), (4, 2)))
    bad.write_bytes(dims + _packed(5, np.zeros(5, "<f4").tobytes()))
    with pytest.raises(CaffeFormatError, match="short.binaryproto.*5 values"):
        load_mean_file(bad)
    garbage = tmp_path / "garbage.binaryproto"
    garbage.write_bytes(b"\xff\xff\xff")
    with pytest.raises(CaffeFormatError, match="garbage.binaryproto"):
        load_mean_file(garbage)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CaffeFormatError, match="objects.npy"):
        load_mean_file(pickled)
    with pytest.raises(InputFileError, match="nope.npy"):
        load_mean_file(tmp_path / "nope.npy")
    other = tmp_path / "mean.txt"
    other.write_text("104 117 123")
    with pytest.raises(CaffeFormatError, match="extension"):
        load_mean_file(other)


def test_npy_mean_drops_batch_dim_and_feeds_transformer(tmp_path: Path) -> None:
    path = tmp_path / "mean.npy"
    np.save(path, np.full((1, 3, 4, 4), 100.0))
    mean = load_mean_file(path)
    assert mean.shape == (3, 4, 4) and mean.dtype == np.float32
    t = Transformer({"data": (1, 3, 2, 2)})
    t.set_mean("data", mean)  # resized 4x4 -> 2x2; constant stays constant
    np.testing.assert_array_equal(t.mean["data"], np.full((3, 2, 2), 100.0, np.float32))
    vector = tmp_path / "vector.npy"
    np.save(vector, np.array([104.0, 117.0, 123.0]))
    assert load_mean_file(vector).shape == (3,)


# ----------------------------------------------------------------------------------------------------------
# The pipeline's fast path: preprocess straight from the decoded 8-bit pixels

FAST_PATH_TOLERANCE = 1e-4  # 0-255 units; measured worst 4.6e-5 (3 float32 ulps near 255)


def _fast_and_slow(image: np.ndarray, size: int, tmp_path: Path, name: str = "x.png"):
    path = tmp_path / name
    assert cv2.imwrite(str(path), image)
    transformer = caffe_imagenet_transformer((1, 3, size, size))
    from camcaffe.runtime.preprocess import decode_image

    fast = transformer.preprocess_decoded("data", decode_image(path))
    slow = transformer.preprocess("data", load_image(path))
    return fast, slow


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((300, 451, 3), 224),
        ((240, 240), 227),
        ((230, 260, 4), 224),
        ((224, 224, 3), 224),
        ((227, 400, 3), 227),
    ],
)
def test_fast_path_equals_caffe_io_within_rounding(shape, size, tmp_path) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    fast, slow = _fast_and_slow(image, size, tmp_path)
    assert fast is not None and fast.shape == slow.shape == (3, size, size)
    assert np.abs(fast - slow).max() <= FAST_PATH_TOLERANCE


def test_fast_path_constant_image_and_fallbacks(tmp_path) -> None:
    fast, slow = _fast_and_slow(np.full((300, 300, 3), 77, np.uint8), 224, tmp_path)
    assert np.array_equal(fast, slow)
    small, _ = _fast_and_slow(np.zeros((100, 300, 3), np.uint8), 224, tmp_path)
    assert small is None  # enlarging: caffe.io's zero border takes part, the long way handles it
    deep, _ = _fast_and_slow(np.zeros((300, 300, 3), np.uint16), 224, tmp_path)
    assert deep is None


@pytest.mark.skipif(not _golden_cases(), reason="../shared/golden real_outputs.npz not available")
@pytest.mark.parametrize(("folder", "size", "rel"), _golden_cases() or [("none", 0, "none")])
def test_fast_path_matches_pycaffe(folder: str, size: int, rel: str) -> None:
    from camcaffe.runtime.preprocess import decode_image

    image_path = DATA / rel
    if not image_path.is_file():
        pytest.skip(f"{image_path} not available")
    with np.load(GOLDEN / folder / "real_outputs.npz") as npz:
        expected = npz[f"{_stem(rel)}/input"][0]
    decoded = decode_image(image_path)
    got = caffe_imagenet_transformer((1, 3, size, size)).preprocess_decoded("data", decoded)
    if got is None:
        # the fast path declines only an image it would enlarge (caffe.io's long way handles those)
        assert min(decoded.shape[:2]) < size, f"{rel}: fast path declined a {decoded.shape} image"
        return
    assert np.abs(got - expected).max() <= GOLDEN_TOLERANCE


TORCHVISION_MEAN, TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torchvision_transformer(size: int) -> Transformer:
    """torchvision's ToTensor + Normalize(mean, std): RGB, 0-1, (x - mean) / std per channel."""
    t = Transformer({"data": (1, 3, size, size)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 1.0)
    t.set_mean("data", np.array(TORCHVISION_MEAN))
    t.set_std("data", TORCHVISION_STD)
    return t


def test_std_divides_after_the_mean_per_channel() -> None:
    image = np.random.default_rng(5).uniform(0, 1, (4, 5, 3)).astype(np.float32)
    t = _torchvision_transformer(4)
    t.inputs["data"] = (1, 3, 4, 5)
    got = t.preprocess("data", image)
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (TORCHVISION_MEAN, TORCHVISION_STD))
    np.testing.assert_allclose(got, (image.transpose(2, 0, 1) - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", got[np.newaxis]), image, atol=1e-6)


def test_std_on_the_fast_path(tmp_path) -> None:
    from camcaffe.runtime.preprocess import decode_image

    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), np.random.default_rng(6).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    t = _torchvision_transformer(224)
    fast = t.preprocess_decoded("data", decode_image(path))
    slow = t.preprocess("data", load_image(path))
    assert fast is not None and np.abs(fast - slow).max() <= 1e-5


@pytest.mark.parametrize("std", [(0.2, 0.2), (0.2, 0.0, 0.2), (0.2, float("nan"), 0.2)])
def test_bad_std_is_refused(std) -> None:
    t = Transformer({"data": (1, 3, 4, 4)})
    with pytest.raises(PreprocessError, match="std"):
        t.set_std("data", std)


def test_preprocess_pixels_keeps_8_bit_values_exact():
    """With raw_scale 255 the pixels enter as float32(pixel): x - mean equals Keras's preprocess_input bit for bit
    (going through load_image's [0, 1] would be off by up to 1.5e-5)."""
    from camcaffe.runtime.preprocess import PreprocessError, Transformer

    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    transformer = Transformer({"data": (1, 3, 4, 5)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255.0)
    mean = np.float32([103.939, 116.779, 123.68])
    transformer.set_mean("data", mean)
    expected = pixels[:, :, ::-1].astype(np.float32) - mean  # vgg16.preprocess_input on img_to_array's floats
    np.testing.assert_array_equal(transformer.preprocess_pixels("data", pixels), expected.transpose(2, 0, 1))
    with pytest.raises(PreprocessError, match="pixels of 5x4 do not fit the input 'data'"):
        transformer.preprocess_pixels("data", np.zeros((5, 4, 3), np.uint8))
