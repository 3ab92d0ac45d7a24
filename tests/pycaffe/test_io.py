"""caffe.io beyond the image functions: Datum helpers and load_image on file objects (open_nsfw's
classify_nsfw.py passes a BytesIO)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.errors import CamcaffeError


def test_datum_round_trip_uint8_and_float() -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 7)
    assert datum.data == pixels.tobytes() and not datum.float_data
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    back[0, 0, 0] = 99  # a writable array, as np.fromstring gave
    features = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3)
    datum = caffe.io.array_to_datum(features)
    assert not datum.HasField("label") and not datum.data
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.float64 and back.shape == (1, 2, 3)
    np.testing.assert_array_equal(back, features.astype(np.float64))
    parsed = caffe.proto.caffe_pb2.Datum.FromString(datum.SerializeToString())
    np.testing.assert_array_equal(caffe.io.datum_to_array(parsed), back)


def test_datum_misfits_are_refused() -> None:
    with pytest.raises(CamcaffeError, match="C x H x W"):
        caffe.io.array_to_datum(np.zeros((2, 2), np.uint8))
    datum = caffe.proto.caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\x00" * 5)
    with pytest.raises(CamcaffeError, match="holds 5 values"):
        caffe.io.datum_to_array(datum)
    with pytest.raises(CamcaffeError, match="encoded"):
        caffe.io.datum_to_array(caffe.proto.caffe_pb2.Datum(encoded=True, data=b"\xff\xd8"))


def test_load_image_reads_file_objects_like_paths(tmp_path: Path) -> None:
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), image)
    from_path = caffe.io.load_image(str(path))
    from_bytes = caffe.io.load_image(io.BytesIO(path.read_bytes()))
    np.testing.assert_array_equal(from_bytes, from_path)
    np.testing.assert_allclose(from_path[..., ::-1], image / 255.0, atol=1e-7)
    with path.open("rb") as handle:
        np.testing.assert_array_equal(
            caffe.io.load_image(handle, color=False), caffe.io.load_image(path, False)
        )
    with pytest.raises(CamcaffeError, match="binary mode"):
        caffe.io.load_image(io.StringIO("not bytes"))
    with pytest.raises(CamcaffeError, match="cannot be decoded"):
        caffe.io.load_image(io.BytesIO(b"not an image at all"))
    with pytest.raises(CamcaffeError, match="empty"):
        caffe.io.load_image(io.BytesIO(b""))
