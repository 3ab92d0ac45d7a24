#!/usr/bin/env python3
"""Class Activation Mapping with pycaffe: the classic CAM demo, ported to Python 3.

The only change from the pycaffe original is `import camcaffe as caffe` in place of `import caffe`
(plus the Python 3 port itself: print(), argparse). Everything else is the legacy flow: caffe.Net with
caffe.TEST, caffe.io.Transformer preprocessing, net.forward(), the classifier weights read from
net.params and the last conv feature maps from net.blobs, CAM = sum over channels of weight x map.

    python examples/legacy_cam_demo.py deploy.prototxt weights.caffemodel image.jpg class_labels.csv \\
        --out overlay.png [--gpu]

The net must end in global average pooling + one InnerProduct classifier (`--class-layer`, default
CAM_fc_14) fed by the feature blob (`--feature-layer`, default CAM_conv), followed by a Softmax `prob`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

import camcaffe as caffe


@dataclass
class CamResult:
    probs: np.ndarray  # (num_classes,) softmax output for the image
    class_index: int  # top-1 class
    cam: np.ndarray  # (h, w) class activation map of the top-1 class at feature-map resolution
    feature_maps: np.ndarray  # (channels, h, w)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Class Activation Map of a Caffe model (legacy pycaffe demo)"
    )
    parser.add_argument("deploy", help="deploy .prototxt")
    parser.add_argument("weights", help=".caffemodel")
    parser.add_argument("image", help="image file")
    parser.add_argument("labels", help='class labels: "index label" per line, space-separated, no header')
    parser.add_argument(
        "--out", default="overlay.png", help="CAM overlay image to write (default overlay.png)"
    )
    parser.add_argument("--class-layer", default="CAM_fc_14", help="InnerProduct classifier layer")
    parser.add_argument("--feature-layer", default="CAM_conv", help="feature blob before global pooling")
    parser.add_argument("--gpu", type=int, nargs="?", const=0, default=None, metavar="ID", help="use GPU ID")
    return parser.parse_args(argv)


def im2double(im: np.ndarray) -> np.ndarray:
    return cv2.normalize(im.astype("float"), None, 0.0, 1.0, cv2.NORM_MINMAX)


def py_map2jpg(imgmap: np.ndarray) -> np.ndarray:
    heatmap_x = np.round(imgmap * 255).astype(np.uint8)
    return cv2.applyColorMap(heatmap_x, cv2.COLORMAP_JET)


def py_returnCAMmap(activation: np.ndarray, weights_LR: np.ndarray) -> np.ndarray:  # noqa: N802, N803
    """CAM of one class: weights_LR (channels,) . activation (channels, h, w) -> (h, w)."""
    n_feat, h, w = activation.shape
    act_vec = np.reshape(activation, [n_feat, h * w])
    weights_vec = np.reshape(weights_LR, [1, n_feat])
    heatmap_vec = np.dot(weights_vec, act_vec)
    return np.reshape(np.squeeze(heatmap_vec), [h, w])


def print_shapes(net) -> None:
    for layer_name, blob in net.blobs.items():
        print(layer_name + "\t" + str(blob.data.shape))
    for layer_name, param in net.params.items():
        print(layer_name + "\t" + " ".join(str(p.data.shape) for p in param))


def make_transformer(net):
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_mean("data", np.array([104, 117, 123]))
    transformer.set_raw_scale("data", 255)
    transformer.set_channel_swap("data", (2, 1, 0))
    return transformer


def run_cam(
    net, data: np.ndarray, class_layer: str = "CAM_fc_14", feature_layer: str = "CAM_conv"
) -> CamResult:
    """Forward one preprocessed image (C, H, W) or (1, C, H, W) and compute the CAM of its top class."""
    data = np.asarray(data, dtype=np.float32).reshape(1, *np.shape(data)[-3:])
    net.blobs["data"].reshape(*data.shape)
    net.blobs["data"].data[...] = data
    out = net.forward()
    probs = out["prob"][0]
    class_index = int(np.argsort(probs)[::-1][0])
    weights = net.params[class_layer][0].data
    feature_maps = net.blobs[feature_layer].data[0]
    cam = py_returnCAMmap(feature_maps, weights[class_index])
    return CamResult(probs.copy(), class_index, cam, feature_maps.copy())


def overlay(image_path: str, cam: np.ndarray) -> np.ndarray:
    image = cv2.imread(image_path)
    height, width = image.shape[:2]
    heatmap = py_map2jpg(im2double(cv2.resize(cam, (width, height))))
    return np.uint8(np.clip((im2double(image) * 0.2 + im2double(heatmap) * 0.7) * 255, 0, 255))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu is not None:
        caffe.set_mode_gpu()
        caffe.set_device(args.gpu)
    else:
        caffe.set_mode_cpu()

    net = caffe.Net(args.deploy, args.weights, caffe.TEST)
    print_shapes(net)

    labels = pd.read_csv(args.labels, sep=" ", header=None)
    net.blobs["data"].reshape(1, 3, 224, 224)
    transformer = make_transformer(net)
    im = caffe.io.load_image(args.image)
    result = run_cam(net, transformer.preprocess("data", im), args.class_layer, args.feature_layer)

    for index in np.argsort(result.probs)[::-1][:5]:
        print(f"{result.probs[index]:.4f}  {labels.iloc[index, 1]}")
    print("CAM of the top class:", labels.iloc[result.class_index, 1])
    if not cv2.imwrite(args.out, overlay(args.image, result.cam)):
        print(f"cannot write {args.out}", file=sys.stderr)
        return 1
    print("overlay written to", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
