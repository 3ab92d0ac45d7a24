"""How one image becomes the net's input(s), and how the maps computed on them return to the image.

A view strategy gives `count` images at the net's input size (or larger, for the Transformer to resize) per
photo, and places the raw maps of those inputs back over the photo. `warp` (caffe.io: the whole image
resized to the input), `crop` (resize to 256, centre crop) and `torchvision` (shorter side to 256 with Pillow's
bilinear filter, centre crop) give one input each; `tencrop` (the CAM demo's oversampling) gives ten.

The resize filter (`--resize-filter`) is `caffe` (caffe.io's bilinear resize of the float image, the default of
warp, crop and tencrop) or one of Pillow's filters reproduced exactly on the 8-bit pixels (`pil-nearest`,
`pil-bilinear`, ...; torchvision's default is `pil-bilinear`, Keras's `load_img` resizes with `pil-nearest`). With
a Pillow filter a view gives 8-bit pixels at the input size (`pixels`), which the pipeline turns into the net
input without a round trip through floats."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camcaffe.errors import CamcaffeError
from camcaffe.explain.cam import normalize, upsample
from camcaffe.runtime.pil_resize import centre_crop_offset, pil_resize, torchvision_resize_size
from camcaffe.runtime.preprocess import max_image_pixels, oversample, resize_image
from camcaffe.runtime.presets import RESIZE_FILTERS

CAFFE_FILTER = "caffe"  # RESIZE_FILTERS is this and "pil-" + each of pil_resize.PIL_FILTERS


def _to_pixels(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (load_image's) as the 8-bit pixels it was decoded from."""
    return np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)


class ImageViews:
    """Base: the whole image, resized to the input by the Transformer (or by Pillow's filter)."""

    name = "warp"
    flag = "--resize warp"
    count = 1
    default_filter = CAFFE_FILTER
    pil_capable = True  # whether the view can resize with a Pillow filter

    def __init__(self, input_hw: Sequence[int] | None, crop_base: int = 256, resize_filter: str | None = None):
        # None: the net takes each image at its own size (a model with a variable input height/width)
        self.input_hw = None if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
        self.crop_base = int(crop_base)
        chosen = resize_filter or self.default_filter
        if chosen not in RESIZE_FILTERS:
            raise CamcaffeError(
                f"--resize-filter {chosen}: unknown; choose one of {', '.join(RESIZE_FILTERS)}"
            )
        if chosen != CAFFE_FILTER and not self.pil_capable:
            raise CamcaffeError(f"{self.flag} resizes with caffe.io only; drop --resize-filter {chosen}")
        if chosen == CAFFE_FILTER and self.default_filter != CAFFE_FILTER:
            raise CamcaffeError(
                f"{self.flag} resizes as Pillow does; give a pil-* --resize-filter (default "
                f"{self.default_filter}), not {chosen}"
            )
        self.resize_filter = chosen

    @property
    def pil_filter(self) -> str | None:
        """The Pillow filter's name ('nearest', 'bilinear', ...), or None for caffe.io's resize."""
        return None if self.resize_filter == CAFFE_FILTER else self.resize_filter[len("pil-") :]

    def pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
        """With a Pillow filter: the views of 8-bit RGB pixels (H, W, 3), each at the input size (at their own
        size for a net with a variable input size)."""
        filter_name = self._require_pil()
        if self.input_hw is None:
            return [pixels]
        return [pil_resize(pixels, self.input_hw, filter_name)]

    def _require_pil(self) -> str:
        if self.pil_filter is None:
            raise CamcaffeError(f"{self.flag}: 8-bit views need a Pillow --resize-filter")
        return self.pil_filter

    def inputs(self, image: np.ndarray) -> list[np.ndarray]:
        """H×W×3 float images, one per view, for the Transformer (which resizes them to the input)."""
        if self.pil_filter is not None:
            return [view.astype(np.float32) / np.float32(255.0) for view in self.pixels(_to_pixels(image))]
        return [image]

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """raw (count, k, h, w) -> (k, height, width) maps over the photo, normalised to [0, 1]."""
        return normalize(upsample(raw[0], (height, width)))


class CentreCropViews(ImageViews):
    """Resize to crop_base × crop_base, take the centre input-size crop; the map is placed back there
    (the rest of the canvas gets the map's minimum) and then resized over the photo."""

    name = "crop"
    flag = "--resize crop"

    def __init__(self, input_hw: Sequence[int] | None, crop_base: int = 256, resize_filter: str | None = None):
        if input_hw is None:
            raise CamcaffeError(f"{self.flag} needs a fixed net input size; give --input-size H,W")
        super().__init__(input_hw, crop_base, resize_filter)
        if max(self.input_hw) > self.crop_base:
            raise CamcaffeError(
                f"{self.flag}: the net input {self.input_hw} is larger than the {self.crop_base} x "
                f"{self.crop_base} resize it is cropped from; use --resize warp"
            )

    def offset(self) -> tuple[int, int]:
        return (self.crop_base - self.input_hw[0]) // 2, (self.crop_base - self.input_hw[1]) // 2

    def inputs(self, image: np.ndarray) -> list[np.ndarray]:
        if self.pil_filter is not None:
            return super().inputs(image)
        top, left = self.offset()
        resized = resize_image(image, (self.crop_base, self.crop_base))
        return [resized[top : top + self.input_hw[0], left : left + self.input_hw[1]]]

    def pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
        top, left = self.offset()
        resized = pil_resize(pixels, (self.crop_base, self.crop_base), self._require_pil())
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
    pil_capable = False

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
    default_filter = "pil-bilinear"

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((resized height, width), (top, left) of the crop) for a photo of this size."""
        resized = torchvision_resize_size(height, width, self.crop_base)
        if resized[0] < self.input_hw[0] or resized[1] < self.input_hw[1]:
            raise CamcaffeError(
                f"{self.flag}: a {height}x{width} photo resized to {resized[0]}x{resized[1]} is smaller than the "
                f"net input {self.input_hw}; use --resize warp"
            )
        # The exact resize holds 32-bit sums of the whole intermediate (about 12 bytes per pixel and channel),
        # and a thin strip's intermediate grows with its aspect ratio: bound it by the decoder's pixel limit / 8.
        limit = max_image_pixels() // 8
        if resized[0] * resized[1] > limit:
            raise CamcaffeError(
                f"{self.flag}: a {height}x{width} photo would be resized to {resized[0]}x{resized[1]} "
                f"({resized[0] * resized[1]:,} pixels, over {limit:,}) before the crop; use --resize warp for "
                "photos this thin"
            )
        return resized, centre_crop_offset(resized[0], resized[1], self.input_hw)

    def pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
        (height, width), (top, left) = self.geometry(pixels.shape[0], pixels.shape[1])
        resized = pil_resize(pixels, (height, width), self._require_pil())
        return [resized[top : top + self.input_hw[0], left : left + self.input_hw[1]]]

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


def make_views(
    name: str, input_hw: Sequence[int] | None, crop_base: int = 256, resize_filter: str | None = None
) -> ImageViews:
    try:
        cls = VIEWS[name]
    except KeyError:
        raise CamcaffeError(f"unknown view mode '{name}'; choose one of {', '.join(sorted(VIEWS))}") from None
    return cls(input_hw, crop_base, resize_filter)
