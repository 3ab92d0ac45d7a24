"""How one image becomes the net's input(s), and how the maps computed on them return to the image.

A view strategy gives `count` images at the net's input size (or larger, for the Transformer to resize) per
photo, and places the raw maps of those inputs back over the photo. `warp` (caffe.io: the whole image
resized to the input) and `crop` (resize to 256, centre crop) give one input each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camcaffe.cam import normalize, upsample
from camcaffe.errors import CamcaffeError
from camcaffe.preprocess import resize_image


class ImageViews:
    """Base: the whole image, resized to the input by the Transformer."""

    name = "warp"
    count = 1

    def __init__(self, input_hw: Sequence[int], crop_base: int = 256):
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.crop_base = int(crop_base)

    def inputs(self, image: np.ndarray) -> list[np.ndarray]:
        """H×W×3 float images, one per view, for the Transformer (which resizes them to the input)."""
        return [image]

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """raw (count, k, h, w) -> (k, height, width) maps over the photo, normalised to [0, 1]."""
        return normalize(upsample(raw[0], (height, width)))


class CentreCropViews(ImageViews):
    """Resize to crop_base × crop_base, take the centre input-size crop; the map is placed back there
    (the rest of the canvas gets the map's minimum) and then resized over the photo."""

    name = "crop"

    def __init__(self, input_hw: Sequence[int], crop_base: int = 256):
        super().__init__(input_hw, crop_base)
        if min(self.input_hw) > self.crop_base:
            raise CamcaffeError(
                f"--resize crop: the net input {self.input_hw} is larger than {self.crop_base}"
            )

    def offset(self) -> tuple[int, int]:
        return (self.crop_base - self.input_hw[0]) // 2, (self.crop_base - self.input_hw[1]) // 2

    def inputs(self, image: np.ndarray) -> list[np.ndarray]:
        top, left = self.offset()
        resized = resize_image(image, (self.crop_base, self.crop_base))
        return [resized[top : top + self.input_hw[0], left : left + self.input_hw[1]]]

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        maps = raw[0]
        base = self.crop_base
        top, left = self.offset()
        h, w = self.input_hw
        canvas = np.empty((maps.shape[0], base, base), dtype=np.float32)
        canvas[:] = maps.min(axis=(1, 2), keepdims=True)
        canvas[:, top : top + h, left : left + w] = upsample(maps, self.input_hw)
        return normalize(upsample(canvas, (height, width)))


VIEWS: dict[str, type[ImageViews]] = {"warp": ImageViews, "crop": CentreCropViews}


def make_views(name: str, input_hw: Sequence[int], crop_base: int = 256) -> ImageViews:
    try:
        cls = VIEWS[name]
    except KeyError:
        raise CamcaffeError(f"unknown view mode '{name}'; choose one of {', '.join(sorted(VIEWS))}") from None
    return cls(input_hw, crop_base)
