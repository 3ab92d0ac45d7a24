"""pycaffe's `caffe.Detector` (BVLC python/caffe/detector.py): R-CNN style windowed classification. Each
window (ymin, xmin, ymax, xmax) of an image is cropped, optionally with `context_pad` pixels of surrounding
context (mean-padded where the box leaves the image), warped to the net's input size and classified.

Selective Search proposals (`detect_selective_search`) need the MATLAB selective_search_ijcv_with_python
package, which is not available here: that call is refused with the way around it."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from camcaffe.pycaffe.classifier import _first_input, make_transformer
from camcaffe.pycaffe.io import load_image, resize_image
from camcaffe.pycaffe.net import TEST, Net, PycaffeError


def _round_half_away(value: float) -> int:
    """Python 2's round() (pycaffe's era), which the context padding arithmetic was written for."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


class Detector(Net):
    """`Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None, channel_swap=None,
    context_pad=None)`; `detect_windows([(image_file, windows), ...])` -> a list of
    {'window', 'prediction', 'filename'} dicts, one per window in order."""

    def __init__(
        self,
        model_file: str | os.PathLike,
        pretrained_file: str | os.PathLike,
        mean: np.ndarray | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
        context_pad: int | None = None,
    ):
        super().__init__(model_file, TEST, weights=pretrained_file)
        _first_input(self, "Detector")
        self.transformer = make_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def configure_crop(self, context_pad: int | None) -> None:
        """The crop size (H, W, C of the input) and, with context padding, the mean in image space."""
        name = self.inputs[0]
        order = self.transformer.transpose[name]
        inverse = [order[t] for t in order]
        self.crop_dims = np.array(self.blobs[name].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(name)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inverse)
        swap = self.transformer.channel_swap.get(name)
        if swap is not None:
            crop_mean = crop_mean[:, :, [list(swap).index(i) for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(name)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax; end-exclusive slices) of `im`, with context when configured."""
        window = np.asarray(window)
        crop = im[int(window[0]) : int(window[2]), int(window[1]) : int(window[3])]
        if not self.context_pad:
            return crop
        size = self.blobs[self.inputs[0]].width  # the input is square, as R-CNN's
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        pad_y = _round_half_away(max(0, -box[0]) * scale_h)
        pad_x = _round_half_away(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise PycaffeError(
                f"Detector.crop: window {window.tolist()} lies outside the {im_h}x{im_w} image"
            )
        crop_h = min(_round_half_away(clip_h * scale_h), size - pad_y)
        crop_w = min(_round_half_away(clip_w * scale_w), size - pad_x)
        context = im[int(box[0]) : int(box[2]), int(box[1]) : int(box[3])]
        context = resize_image(context, (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y : pad_y + crop_h, pad_x : pad_x + crop_w] = context
        return out

    def detect_windows(
        self, images_windows: Iterable[tuple[str | os.PathLike, Sequence[Sequence[int]]]]
    ) -> list[dict]:
        """Classify every window of every image (warped to the input size) in batches of the net's size."""
        pairs = [(name, list(windows)) for name, windows in images_windows]
        crops = []
        for filename, windows in pairs:
            image = load_image(filename).astype(np.float32)
            for window in windows:
                crop = self.crop(image, window)
                if crop.shape[0] == 0 or crop.shape[1] == 0:
                    raise PycaffeError(
                        f"Detector.detect_windows: window {list(window)} of {filename} is empty; windows are "
                        "(ymin, xmin, ymax, xmax) inside the image"
                    )
                crops.append(crop)
        if not crops:
            raise PycaffeError("Detector.detect_windows: no windows given")
        name = self.inputs[0]
        caffe_in = np.zeros((len(crops), *self.blobs[name].shape[1:]), dtype=np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: caffe_in})[self.outputs[0]]
        detections = []
        index = 0
        for filename, windows in pairs:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[index], "filename": filename})
                index += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str | os.PathLike]) -> list[dict]:
        raise PycaffeError(
            "Detector.detect_selective_search: Selective Search proposals need MATLAB and "
            "selective_search_ijcv_with_python, which camcaffe does not provide; compute the windows "
            "elsewhere and call detect_windows([(image, windows), ...])"
        )
