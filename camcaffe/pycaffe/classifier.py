"""pycaffe's `caffe.Classifier`: a Net that resizes images to `image_dims`, takes 10 crops (or the centre crop)
of the net's input size, and averages the crops' predictions, as BVLC python/caffe/classifier.py does."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from camcaffe.pycaffe.io import Transformer, oversample, resize_image
from camcaffe.pycaffe.net import TEST, Net, PycaffeError


def make_transformer(net: Net, mean=None, input_scale=None, raw_scale=None, channel_swap=None) -> Transformer:
    """The Transformer pycaffe's Classifier and Detector configure for the net's first input."""
    name = net.inputs[0]
    transformer = Transformer({name: net.blobs[name].data.shape})
    transformer.set_transpose(name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(name, mean)
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    return transformer


def _first_input(net: Net, what: str) -> str:
    if not net.inputs:
        raise PycaffeError(f"{what}: the net has no input blob to feed images to")
    if len(net.blobs[net.inputs[0]].shape) != 4:
        raise PycaffeError(f"{what}: the input blob '{net.inputs[0]}' must be N x C x H x W")
    return net.inputs[0]


class Classifier(Net):
    """`Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None)`; `predict(inputs, oversample=True)` gives (N, classes) of the net's first output."""

    def __init__(
        self,
        model_file: str | os.PathLike,
        pretrained_file: str | os.PathLike,
        image_dims: Sequence[int] | None = None,
        mean: np.ndarray | None = None,
        input_scale: float | None = None,
        raw_scale: float | None = None,
        channel_swap: Sequence[int] | None = None,
    ):
        super().__init__(model_file, pretrained_file, TEST)
        _first_input(self, "Classifier")
        self.transformer = make_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or len(image_dims) == 0 else image_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class scores of HxWxK images: each resized to image_dims, then the mean over its 10 crops
        (corners, centre, mirrored) or its centre crop alone."""
        if len(inputs) == 0:
            raise PycaffeError("Classifier.predict(): no images given; pass a list of HxWxK arrays")
        if any(np.ndim(image) != 3 for image in inputs):
            raise PycaffeError(
                "Classifier.predict(): every image must be HxWxK (caffe.io.load_image gives HxWx3)"
            )
        height, width = (int(d) for d in self.image_dims)
        resized = np.zeros((len(inputs), height, width, np.shape(inputs[0])[2]), dtype=np.float32)
        for i, image in enumerate(inputs):
            resized[i] = resize_image(image, (height, width))
        if oversample:
            crops = _oversample(resized, self.crop_dims)
        else:
            center = np.array(self.image_dims, dtype=float) / 2.0
            box = (np.tile(center, 2) + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])).astype(
                int
            )
            crops = resized[:, box[0] : box[2], box[1] : box[3], :]
        if crops.shape[1] == 0 or crops.shape[2] == 0:
            raise PycaffeError(
                f"Classifier.predict(): image_dims {tuple(self.image_dims)} leave no centre crop of "
                f"{tuple(self.crop_dims)}; give image_dims at least the net's input size"
            )
        name = self.inputs[0]
        caffe_in = np.zeros((crops.shape[0], *self.blobs[name].shape[1:]), np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions


def _oversample(images: np.ndarray, crop_dims: np.ndarray) -> np.ndarray:
    height, width = images.shape[1:3]
    if crop_dims[0] > height or crop_dims[1] > width:
        raise PycaffeError(
            f"Classifier.predict(): image_dims {(height, width)} are smaller than the net's input "
            f"{tuple(int(d) for d in crop_dims)}; 10 crops need image_dims at least that size"
        )
    return oversample(images, tuple(int(d) for d in crop_dims))
