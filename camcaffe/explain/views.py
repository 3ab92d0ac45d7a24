"""How one image becomes the net's input(s), and how the maps computed on them return to the image.

A view strategy gives `count` images at the net's input size (or larger, for the Transformer to resize) per
photo, and places the raw maps of those inputs back over the photo. `warp` (caffe.io: the whole image
resized to the input), `crop` (resize to 256, centre crop) and `torchvision` (shorter side to 256 with Pillow's
bilinear filter, centre crop) give one input each; `tencrop` (the CAM demo's oversampling) gives ten."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camcaffe.errors import CamcaffeError
from camcaffe.explain.cam import normalize, upsample
from camcaffe.runtime.pil_resize import centre_crop_offset, pil_bilinear_resize, torchvision_resize_size
from camcaffe.runtime.preprocess import oversample, resize_image


class ImageViews:
    """Base: the whole image, resized to the input by the Transformer."""

    name = "warp"
    count = 1

    def __init__(self, input_hw: Sequence[int] | None, crop_base: int = 256):
        # None: the net takes each image at its own size (a model with a variable input height/width)
        self.input_hw = None if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
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
    flag = "--resize crop"

    def __init__(self, input_hw: Sequence[int] | None, crop_base: int = 256):
        if input_hw is None:
            raise CamcaffeError(f"{self.flag} needs a fixed net input size; give --input-size H,W")
        super().__init__(input_hw, crop_base)
        if max(self.input_hw) > self.crop_base:
            raise CamcaffeError(
                f"{self.flag}: the net input {self.input_hw} is larger than the {self.crop_base} x "
                f"{self.crop_base} resize it is cropped from; use --resize warp"
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


class TenCropViews(CentreCropViews):
    """The CAM authors' 10-crop oversampling (their demo and ILSVRC protocol; caffe.io.oversample's order):
    resize to crop_base x crop_base, crops at the four corners (top-left, top-right, bottom-left,
    bottom-right) and the centre, then the same five mirrored left-right.

    Merging follows their MATLAB code: each crop's map is resized to the crop, the mirrored ones are flipped
    back, every map is put at its place on a crop_base x crop_base canvas of zeros, and the canvas holds the
    sum of their absolute values; the canvas is resized over the photo and divided by its maximum."""

    name = "tencrop"
    flag = "--crops 10"
    count = 10

    def offsets(self) -> list[tuple[int, int]]:
        """(top, left) of the five crops on the canvas, as caffe.io.oversample places them."""
        base = self.crop_base
        h, w = self.input_hw
        centre = (int(base / 2.0 - h / 2.0), int(base / 2.0 - w / 2.0))
        return [(0, 0), (0, base - w), (base - h, 0), (base - h, base - w), centre]

    def inputs(self, image: np.ndarray) -> list[np.ndarray]:
        resized = resize_image(image, (self.crop_base, self.crop_base))
        return list(oversample([resized], self.input_hw))

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        if raw.ndim != 4 or raw.shape[0] != self.count:
            raise CamcaffeError(f"10-crop merge needs maps of shape (10, k, h, w), got {raw.shape}")
        h, w = self.input_hw
        crops = np.abs(upsample(raw, self.input_hw))
        canvas = np.zeros((raw.shape[1], self.crop_base, self.crop_base), dtype=np.float32)
        for view, (top, left) in enumerate(self.offsets() * 2):
            crop = crops[view] if view < 5 else crops[view][:, :, ::-1]
            canvas[:, top : top + h, left : left + w] += crop
        merged = upsample(canvas, (height, width))
        peak = merged.max(axis=(1, 2), keepdims=True)
        return np.where(peak > 0, merged / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


class TorchvisionViews(ImageViews):
    """torchvision's `Resize(crop_base)` + `CenterCrop(input)` on a PIL image: the shorter side resized to
    crop_base with Pillow's antialiased bilinear filter (reproduced exactly on the 8-bit pixels), the centre
    crop taken as torchvision rounds it; the map is placed back there and resized over the photo."""

    name = "torchvision"
    flag = "--resize torchvision"

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((resized height, width), (top, left) of the crop) for a photo of this size."""
        resized = torchvision_resize_size(height, width, self.crop_base)
        if resized[0] < self.input_hw[0] or resized[1] < self.input_hw[1]:
            raise CamcaffeError(
                f"{self.flag}: a {height}x{width} photo resized to {resized[0]}x{resized[1]} is smaller than the "
                f"net input {self.input_hw}; use --resize warp"
            )
        return resized, centre_crop_offset(resized[0], resized[1], self.input_hw)

    def inputs(self, image: np.ndarray) -> list[np.ndarray]:
        (height, width), (top, left) = self.geometry(image.shape[0], image.shape[1])
        pixels = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
        resized = pil_bilinear_resize(pixels, (height, width))
        crop = resized[top : top + self.input_hw[0], left : left + self.input_hw[1]]
        return [crop.astype(np.float32) / np.float32(255.0)]

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        maps = raw[0]
        (rh, rw), (top, left) = self.geometry(height, width)
        h, w = self.input_hw
        canvas = np.empty((maps.shape[0], rh, rw), dtype=np.float32)
        canvas[:] = maps.min(axis=(1, 2), keepdims=True)
        canvas[:, top : top + h, left : left + w] = upsample(maps, self.input_hw)
        return normalize(upsample(canvas, (height, width)))


VIEWS: dict[str, type[ImageViews]] = {
    "warp": ImageViews,
    "crop": CentreCropViews,
    "tencrop": TenCropViews,
    "torchvision": TorchvisionViews,
}


def make_views(name: str, input_hw: Sequence[int] | None, crop_base: int = 256) -> ImageViews:
    try:
        cls = VIEWS[name]
    except KeyError:
        raise CamcaffeError(f"unknown view mode '{name}'; choose one of {', '.join(sorted(VIEWS))}") from None
    return cls(input_hw, crop_base)
