"""The CAM pipeline: decode -> preprocess -> inference -> CAM -> box -> (overlay), in batches.

One implementation for every front end (the `cam` command, scripts, a distributed runner): each
stage is a method with plain inputs and outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcaffe.errors import CamcaffeError, LabelsError
from camcaffe.explain.cam import softmax
from camcaffe.explain.cam_export import CamOutputs, record_of
from camcaffe.explain.cam_head import CamHead
from camcaffe.explain.methods import MethodBatch, make_method
from camcaffe.explain.methods.base import from_layout, input_layout, nchw_dims, to_layout
from camcaffe.explain.views import ImageViews, make_views
from camcaffe.localize.boxes import make_boxer
from camcaffe.output.render import overlay, write_image_atomic
from camcaffe.runtime.preprocess import Transformer, decode_image, display_pixels, image_from_decoded
from camcaffe.runtime.session import ModelSession

RESULT_COLUMNS = [
    "image",
    "rank",
    "class_index",
    "label",
    "probability",
    "x0",
    "y0",
    "x1",
    "y1",
    "overlay",
    "error",
    "boxes",  # every box the boxer gave, best first: "x0 y0 x1 y1;x0 y0 x1 y1" (--boxes dt gives several)
]
# How overlays name the method (OpenCV's Hershey font has no '·': it is drawn as '?', so keep ASCII).
METHOD_TITLES = {
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
    "eigencam": "Eigen-CAM",
}
TRANSFORMERS_KEPT = 16  # Transformers (one per net input size) a pipeline keeps for images at their own size
# transforms.CenterCrop(224) of torchvision's preprocessing: --resize torchvision on a model of variable size
TORCHVISION_CROP = (224, 224)
IMAGENET_DEFAULTS = {"mean": [104.0, 117.0, 123.0], "raw_scale": 255.0, "channel_swap": [2, 1, 0]}


class EmptyFeatureMap(CamcaffeError):
    """The net input is too small: the feature map has no pixel left."""


@dataclass
class CamSettings:
    top_k: int = 1
    classes: list[str] = field(default_factory=list)  # names or indices, as given
    alpha: float = 0.5
    box_threshold: float = 0.2
    save_npy: bool = False
    write_overlays: bool = True
    resize: str = "warp"  # a views.VIEWS name: "warp" (caffe.io), "crop" (256 + centre crop), ...
    crop_base: int = 256
    method: str = "cam"  # a methods.METHODS name
    boxes: str = "threshold"  # a localize.BOXERS name
    batch_size: int = 8  # for methods that run extra forward passes (Score-CAM's masked inputs)
    input_size: tuple[int, int] | None = None  # (H, W) for a model whose input height/width are variable
    layout: str | None = None  # "nchw" | "nhwc" (channels-last: Keras, tf2onnx); None: from the input's shape
    score: str = "logit"  # what the gradient methods differentiate: "logit" or the Softmax "prob"
    resize_filter: str | None = None  # a views.RESIZE_FILTERS name; None: the view's own (caffe, or Pillow's)


@dataclass
class Preprocess:
    mean: list[float] | None = None
    mean_image: np.ndarray | None = None
    raw_scale: float | None = None
    channel_swap: list[int] | None = None
    input_scale: float | None = None
    std: list[float] | None = None  # per channel, net order: (x - mean) / std, as torchvision's Normalize


@dataclass
class ImageOutcome:
    path: Path
    stem: str
    rows: list[dict]
    error: str | None = None
    cams: np.ndarray | None = None  # (k, h, w) raw maps for the selected classes; (views, k, h, w) if several


@dataclass
class PreparedBatch:
    """One batch after `CamPipeline.prepare`: per image (in input order) the photo as uint8 H×W×3 BGR
    and the net inputs (views×C×H×W), or None for both and the error message."""

    paths: list[Path]
    stems: list[str]
    images: list[np.ndarray | None]
    inputs: list[np.ndarray | None]
    errors: list[str | None]


def transformer_for_settings(name: str, shape: Sequence[int], preprocess: Preprocess) -> Transformer:
    """caffe.io's Transformer of net input `name` (N, C, H, W) with the settled preprocessing."""
    transformer = Transformer({name: tuple(shape)})
    transformer.set_transpose(name, (2, 0, 1))
    if preprocess.channel_swap is not None:
        transformer.set_channel_swap(name, preprocess.channel_swap)
    if preprocess.raw_scale is not None:
        transformer.set_raw_scale(name, preprocess.raw_scale)
    if preprocess.mean_image is not None:
        transformer.set_mean(name, preprocess.mean_image)
    elif preprocess.mean is not None:
        transformer.set_mean(name, np.asarray(preprocess.mean, dtype=np.float32))
    if preprocess.std is not None:
        transformer.set_std(name, preprocess.std)
    if preprocess.input_scale is not None:
        transformer.set_input_scale(name, preprocess.input_scale)
    return transformer


PIXEL_SETTINGS = ("mean", "raw_scale", "channel_swap", "input_scale", "std")
"""The keys of `camcaffe.preprocess` that say how pixel values become net input values."""


def preprocess_from_metadata(session: ModelSession, overrides: Preprocess) -> tuple[Preprocess, bool]:
    """Metadata written by `convert`, overridden by flags; (settings, whether defaults were assumed)."""
    meta = session.info.preprocess
    # Metadata that records only how to resize (`meta --input-size`, `--resize-filter`) says nothing of the
    # pixel values: the defaults are assumed for them as for a model without metadata.
    records_pixels = any(key in meta for key in PIXEL_SETTINGS) or session.info.mean_image() is not None
    assumed = (
        not records_pixels
        and overrides.mean is None
        and overrides.mean_image is None
        and overrides.raw_scale is None
    )
    base = IMAGENET_DEFAULTS if assumed else meta
    mean_image = overrides.mean_image if overrides.mean_image is not None else session.info.mean_image()
    return Preprocess(
        mean=overrides.mean
        if overrides.mean is not None
        else (None if mean_image is not None else base.get("mean")),
        mean_image=mean_image if overrides.mean is None else None,
        raw_scale=overrides.raw_scale if overrides.raw_scale is not None else base.get("raw_scale"),
        channel_swap=overrides.channel_swap
        if overrides.channel_swap is not None
        else base.get("channel_swap"),
        input_scale=overrides.input_scale if overrides.input_scale is not None else base.get("input_scale"),
        std=overrides.std if overrides.std is not None else base.get("std"),
    ), assumed


def metadata_input_size(session: ModelSession) -> tuple[int, int] | None:
    """The net input size (H, W) the model's preprocessing metadata fixes (`camcaffe.preprocess` key
    "input_size", e.g. a torchvision-style crop), or None."""
    size = session.info.preprocess.get("input_size")
    if size is None:
        return None
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise CamcaffeError(
            f"{session.source}: metadata camcaffe.preprocess input_size {size!r} is not [H, W] in pixels; "
            "give --input-size H,W or write the metadata again"
        )
    return size[0], size[1]


def _check_is_classifier(session: ModelSession) -> None:
    """A model none of whose outputs is one score vector per image (a segmentation map, SSD's detection rows,
    ...) is not an image classifier: say so in one line rather than failing on a missing head or, worse,
    treating every pixel as a class."""
    shapes = []
    for output in session.lite.graph.output:
        dims = output.type.tensor_type.shape.dim if output.type.HasField("tensor_type") else []
        if not dims:
            return  # undeclared shape: the head finder decides
        values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(values) <= 2 or all(v == 1 for v in values[2:]):
            return
        shapes.append(f"{output.name} {'x'.join('?' if v is None else str(v) for v in values)}")
    if shapes:
        raise CamcaffeError(
            f"{session.source}: not an image classifier - its outputs ({'; '.join(shapes)}) hold scores per "
            "pixel or per box (a segmentation or detection net such as SegNet or SSD), and camcaffe cam maps "
            "the classes of image classifiers (the converted model itself runs in any onnxruntime)"
        )


class CamPipeline:
    def __init__(
        self,
        session: ModelSession,
        preprocess: Preprocess,
        settings: CamSettings,
        labels: list[str] | None = None,
        feature_layer: str | None = None,
        fc_layer: str | None = None,
        labels_source: str | os.PathLike | None = None,
    ):
        self.session = session
        self.settings = settings
        _check_is_classifier(session)
        self.input_name = session.input_names[0]
        self.layout = input_layout(session.input_dims(self.input_name), settings.layout)
        self.method = make_method(
            settings.method,
            session,
            feature_layer=feature_layer,
            fc_layer=fc_layer,
            batch_size=settings.batch_size,
            score=settings.score,
            input_layout=self.layout,
        )
        self.head: CamHead = self.method.head
        self.boxer = make_boxer(settings.boxes, settings.box_threshold)
        self.labels = labels if labels is not None else session.info.labels
        if self.labels is not None and len(self.labels) != self.head.num_classes:
            where = f"label file {labels_source}" if labels_source else "the model's embedded labels"
            raise LabelsError(
                f"{where} has {len(self.labels)} labels but the classifier '{self.head.fc_node}' has "
                f"{self.head.num_classes} classes; give a matching --labels file"
            )
        self.preprocess = preprocess
        shape = self._input_shape()
        self.input_shape = shape
        self.input_hw = shape[-2:]
        # None: a model with a variable input height/width fed each image at its own size (see _input_shape)
        self.feed_hw: tuple[int, int] | None = None if shape[2] is None else (shape[2], shape[3])
        self._transformers: dict[tuple[int, int], Transformer] = {}
        self.transformer = None if self.feed_hw is None else self.transformer_for(self.feed_hw)
        self.views = make_views(settings.resize, self.feed_hw, settings.crop_base, settings.resize_filter)
        if self.views.count > 1 and settings.method == "eigencam":
            raise CamcaffeError(
                "--crops 10 merges the crops' maps by absolute value, as the CAM authors did; Eigen-CAM's maps are "
                "signed (the background is negative) and would light up: use --crops 1 with eigencam"
            )
        self.class_indices = [self._class_index(c) for c in settings.classes]
        if settings.top_k < 0 or settings.top_k > self.head.num_classes:
            raise CamcaffeError(f"--top-k {settings.top_k} must lie between 0 and {self.head.num_classes}")
        overridden = feature_layer is not None or fc_layer is not None
        self.in_graph: CamOutputs | None = None if overridden else self._in_graph_outputs()

    def _in_graph_outputs(self) -> CamOutputs | None:
        """The model's in-graph CAM outputs (`camcaffe export-cam`, `convert --with-cam`) when they can stand in
        for the feature map: method cam on the same head, one view per image, at most as many top classes as
        the model maps, and named classes only when the model has the class input."""
        graph = self.session.lite.graph
        record = record_of(
            self.session.info.metadata, set(self.session.output_names), {v.name for v in graph.input}
        )
        settings, head = self.settings, self.head
        if record is None or settings.method != "cam" or self.views.count != 1:
            return None
        if record.kind != head.kind or record.num_classes != head.num_classes:
            return None
        if record.feature_layout != head.layout:  # a version-1 record is of a channels-first feature map
            return None
        if record.feature_tensor != head.feature_blob or settings.top_k > record.top_k:
            return None
        if head.prob_output is not None and record.probabilities != head.prob_output:
            return None
        if head.prob_output is None and (head.logits is None or record.logits != head.logits):
            return None
        if self.class_indices and record.class_input is None:
            return None
        if not self.class_indices and settings.top_k == 0:
            return None
        return record

    def transformer_for(self, hw: Sequence[int]) -> Transformer:
        """caffe.io's Transformer for net inputs of height, width `hw` (one per size, made on first use)."""
        key = (int(hw[0]), int(hw[1]))
        transformer = self._transformers.get(key)
        if transformer is not None:
            return transformer
        transformer = transformer_for_settings(self.input_name, (1, self.input_shape[1], *key), self.preprocess)
        if len(self._transformers) >= TRANSFORMERS_KEPT:  # (a mean image is held resized for each size)
            self._transformers.pop(next(k for k in self._transformers if k != self.feed_hw))
        self._transformers[key] = transformer
        return transformer

    def _input_shape(self) -> list[int | None]:
        """(N, C, H, W) the images are fed at: the declared dims; for a variable H, W: --input-size, else the
        size the model's metadata gives, else torchvision's 224 x 224 centre crop for --resize torchvision, else
        None, None (each image at its own size, as the frameworks' tutorials feed an unresized image), which only
        the plain whole-image view allows."""
        dims = nchw_dims(self.session.input_dims(self.input_name), self.layout)
        source, name = self.session.source, self.input_name
        if len(dims) != 4:
            raise CamcaffeError(
                f"{source}: input '{name}' has {len(dims)} dims; camcaffe cam feeds images as N,C,H,W"
            )
        if dims[1] is None:
            raise CamcaffeError(
                f"{source}: input '{name}' has a variable channel count; camcaffe cam needs it fixed"
            )
        if dims[1] != 3:
            raise CamcaffeError(
                f"{source}: input '{name}' takes {dims[1]} channel(s); camcaffe cam feeds colour photos (3 "
                "channels); give the model a 3-channel input"
            )
        size = self.settings.input_size
        if size is not None:
            if any(d is not None and d != s for d, s in zip(dims[2:], size, strict=True)):
                raise CamcaffeError(
                    f"{source}: input '{name}' is fixed at {dims[2]}x{dims[3]}; --input-size "
                    f"{size[0]},{size[1]} does not fit it (drop --input-size)"
                )
            return [dims[0] or 1, dims[1], size[0], size[1]]
        if dims[2] is not None and dims[3] is not None:
            return [dims[0] or 1, dims[1], dims[2], dims[3]]
        shown = "x".join("?" if d is None else str(d) for d in dims[1:])
        stored = metadata_input_size(self.session)
        if stored is not None and all(d is None or d == s for d, s in zip(dims[2:], stored, strict=True)):
            return [dims[0] or 1, dims[1], stored[0], stored[1]]
        if dims[2] is not None or dims[3] is not None:
            raise CamcaffeError(
                f"{source}: input '{name}' has one variable side (C,H,W = {shown}); give the size to feed the "
                "images at with --input-size H,W"
            )
        if self.settings.resize == "torchvision":  # Resize(256) + CenterCrop(224), as the preset says
            return [dims[0] or 1, dims[1], *TORCHVISION_CROP]
        if self.settings.resize != "warp":
            flag = "--crops 10" if self.settings.resize == "tencrop" else f"--resize {self.settings.resize}"
            raise CamcaffeError(
                f"{source}: input '{name}' has a variable height/width (C,H,W = {shown}) and {flag} cuts a "
                "fixed-size net input: give it with --input-size H,W, or drop the flag to feed each image at its "
                "own size"
            )
        return [dims[0] or 1, dims[1], None, None]

    def extra_cost(self) -> tuple[int, float] | None:
        """For methods that run extra passes per image (Score-CAM, Ablation-CAM): (passes per image, estimated
        seconds per image), measured on one blank input (224 x 224 when images go in at their own size); None
        for the others."""
        if self.in_graph is not None:  # plain CAM: one forward pass, nothing to measure
            return None
        probe = np.zeros((1, self.input_shape[1], *(self.feed_hw or (224, 224))), np.float32)
        _, features = self.infer(probe)
        cost = self.method.extra_passes(features.shape, probe)
        if cost is None:
            return None
        passes, seconds = cost
        return passes * self.views.count, seconds * self.views.count

    def _class_index(self, given: str) -> int:
        from camcaffe.runtime.labels import resolve_class

        synsets = getattr(self.labels, "synsets", None)  # a --labels synset_words.txt keeps its ids
        if synsets is None and self.labels == self.session.info.labels:
            synsets = self.session.info.json("synsets")  # the ids embedded with the model's labels
        return resolve_class(given, self.labels, self.head.num_classes, synsets)

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels else f"class_{index}"

    # --- stages -------------------------------------------------------------------------------------
    def load(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Decode and preprocess one image: (the photo as uint8 H×W×3 BGR for drawing, net inputs
        views×C×H×W). The inputs are caffe.io's (load_image, then Transformer.preprocess of each view); a model
        with a variable input size gets the image at its own size."""
        decoded = decode_image(path)
        transformer = self.transformer or self.transformer_for(decoded.shape[:2])
        if self.views.pil_filter is not None:  # Pillow's resize of the 8-bit pixels, as Keras and torchvision
            display = display_pixels(decoded, path)
            views = self.views.pixels(np.ascontiguousarray(display[:, :, ::-1]))
            return display, np.stack([transformer.preprocess_pixels(self.input_name, v) for v in views])
        if self.views.count == 1 and type(self.views) is ImageViews:
            fast = transformer.preprocess_decoded(self.input_name, decoded)
            if fast is not None:
                return display_pixels(decoded, path), fast[np.newaxis]
        image = image_from_decoded(decoded, path)
        views = self.views.inputs(image)
        inputs = np.stack([transformer.preprocess(self.input_name, view) for view in views])
        return np.clip(image[:, :, ::-1] * 255.0 + 0.5, 0, 255).astype(np.uint8), inputs

    def net_input(self, image: np.ndarray) -> np.ndarray:
        """The single view's net input (C, H, W) of an H×W×3 float image (evaluate's perturbations)."""
        if self.views.count != 1:
            raise CamcaffeError("one net input per image needs one view per image (--resize warp or crop)")
        view = self.views.inputs(image)[0]
        return (self.transformer or self.transformer_for(view.shape[:2])).preprocess(self.input_name, view)

    def to_image_space(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """Raw maps of one image, (k, h, w) or (views, k, h, w) -> (k, height, width) normalised to [0, 1]."""
        if raw.ndim == 3:
            raw = raw[None]
        return self.views.to_image_space(raw, height, width)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities N×K, feature maps N×C×h×w) for a preprocessed batch."""
        # Targets of the non-CAM methods name their class scores; without a Softmax those give the probabilities.
        # A CAM head without a Softmax: the probabilities are the softmax of the model's own class scores.
        scores = (
            None
            if self.head.prob_output
            else (getattr(self.head, "score_tensor", None) or getattr(self.head, "logits", None))
        )
        wanted = [self.head.feature_blob] + ([self.head.prob_output] if self.head.prob_output else [])
        feed = to_layout(batch, self.layout)
        values = self.session.run({self.input_name: feed}, wanted + ([scores] if scores else []))
        features = from_layout(values[self.head.feature_blob], getattr(self.head, "layout", "nchw"))
        if self.head.prob_output:
            probabilities = values[self.head.prob_output].reshape(len(batch), -1)
        elif scores:
            probabilities = softmax(values[scores].reshape(len(batch), -1), axis=1)
        else:
            pooled = features.mean(axis=(2, 3))
            logits = pooled if self.head.kind == "class_conv" else pooled @ self.head.weights.T
            if self.head.bias is not None and self.head.kind != "class_conv":
                logits = logits + self.head.bias
            probabilities = softmax(logits, axis=1)
        return probabilities, features

    def select_classes(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image: the classes to map (top-k then named ones) and their ranks (1 = best)."""
        order, ranks = _ranking(probabilities)
        named = np.asarray(self.class_indices, dtype=np.int64)[None, :].repeat(len(order), 0)
        # A named class that is also in the top-k appears twice here; _finish writes it once.
        classes = np.concatenate([order[:, : self.settings.top_k], named], axis=1).astype(np.int64)
        return classes, np.take_along_axis(ranks, classes, axis=1)

    def infer_in_graph(
        self, batch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """With in-graph CAM outputs: (probabilities N×K, classes, ranks, raw maps N×k×h×w) as `infer`,
        `select_classes` and `maps` give them, fetching the maps and the top classes and probabilities instead
        of the feature map; the probability vector too (N×K) when classes are named (for their ranks) or when
        the model has no Softmax (the pipeline's probabilities are then a float64 softmax of the model's class
        scores, and the graph's float32 ranking is checked against it). None when that check fails (scores
        equal in float32 only): the batch then takes the feature-map path. Probabilities of classes neither
        in the top-k nor named are NaN: nothing reads them."""
        record, k, n = self.in_graph, self.settings.top_k, len(batch)
        assert record is not None
        feeds = {self.input_name: to_layout(batch, self.layout)}
        fetch = [record.top_classes, record.top_probabilities, record.maps] if k else []
        scores = record.logits if self.head.prob_output is None else None
        if scores is not None:
            fetch.append(scores)
        elif self.class_indices:
            fetch.append(record.probabilities)
        if self.class_indices:
            assert record.class_input is not None and record.class_maps is not None
            feeds[record.class_input] = np.tile(np.asarray(self.class_indices, np.int64), (n, 1))
            fetch.append(record.class_maps)
        values = self.session.run(feeds, fetch)
        raw = values[record.maps if k else record.class_maps]
        if raw.shape[2] == 0 or raw.shape[3] == 0:
            raise self._empty_feature_map(batch, raw.shape)
        classes, ranks, maps = [], [], []
        probabilities = np.full((n, self.head.num_classes), np.nan, np.float32)
        if scores is not None:
            probabilities = softmax(values[scores].reshape(n, -1), axis=1)
        elif self.class_indices:
            probabilities = values[record.probabilities].reshape(n, -1)
        if k:
            top = values[record.top_classes][:, :k].astype(np.int64)
            if scores is not None and not np.array_equal(top, _ranking(probabilities)[0][:, :k]):
                return None
            classes.append(top)
            ranks.append(np.tile(np.arange(1, k + 1), (n, 1)))
            maps.append(values[record.maps][:, :k])
            if scores is None and not self.class_indices:
                np.put_along_axis(probabilities, top, values[record.top_probabilities][:, :k], axis=1)
        if self.class_indices:
            named = feeds[record.class_input]
            classes.append(named)
            ranks.append(np.take_along_axis(_ranking(probabilities)[1], named, axis=1))
            maps.append(values[record.class_maps])
        return (
            probabilities,
            np.concatenate(classes, axis=1),
            np.concatenate(ranks, axis=1),
            np.concatenate(maps, axis=1).astype(np.float32, copy=False),
        )

    def maps(
        self, inputs: np.ndarray, features: np.ndarray, probabilities: np.ndarray, classes: np.ndarray
    ) -> np.ndarray:
        """Raw maps (N, k, h, w) of the chosen classes, by the configured method."""
        return self.method.maps(MethodBatch(inputs, features, probabilities, classes))

    def prepare(self, paths: Sequence[Path], stems: Sequence[str]) -> PreparedBatch:
        """Decode and preprocess one batch (the CPU-bound first half of `process`); an image that
        cannot be read gets its error, the rest go on."""
        prepared = PreparedBatch(list(paths), list(stems), [], [], [])
        for path in prepared.paths:
            try:
                image, data = self.load(path)
            except CamcaffeError as exc:
                prepared.images.append(None)
                prepared.inputs.append(None)
                message = str(exc)  # decoder errors name the file; a view's refusal does not
                prepared.errors.append(message if message.startswith(str(path)) else f"{path}: {message}")
                continue
            prepared.images.append(image)
            prepared.inputs.append(data)
            prepared.errors.append(None)
        return prepared

    def finish_batch(self, prepared: PreparedBatch, out_dir: Path | None) -> list[ImageOutcome]:
        """Inference, maps, boxes and overlays of a prepared batch: outcomes in input order. Images whose net
        inputs differ in size (a model fed each image at its own size) run in groups of one size."""
        paths, stems = prepared.paths, prepared.stems
        outcomes: list[ImageOutcome | None] = [None] * len(paths)
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, (image, data, error) in enumerate(
            zip(prepared.images, prepared.inputs, prepared.errors, strict=True)
        ):
            if error is not None or image is None or data is None:
                outcomes[position] = ImageOutcome(paths[position], stems[position], [], error=error)
                continue
            groups.setdefault(tuple(data.shape), []).append(position)
        for shape, positions in groups.items():
            inputs = [prepared.inputs[position] for position in positions]
            try:
                probabilities, classes, ranks, raw = self._infer_group(inputs)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
                own_size = self.feed_hw is None
                if not own_size or not (isinstance(exc, EmptyFeatureMap) or _fails_at_run_time(exc)):
                    raise
                # The net cannot run on this size (too small for its poolings): those images fail, not the run.
                detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
                for position in positions:
                    outcomes[position] = ImageOutcome(
                        paths[position],
                        stems[position],
                        [],
                        error=f"{paths[position]}: the model cannot run on a {shape[-2]}x{shape[-1]} input "
                        f"({detail}); give --input-size H,W",
                    )
                continue
            for i, position in enumerate(positions):
                outcomes[position] = self._finish(
                    paths[position],
                    stems[position],
                    prepared.images[position],
                    probabilities[i],
                    classes[i],
                    ranks[i],
                    raw[i],
                    out_dir,
                )
        return [o for o in outcomes if o is not None]

    def _infer_group(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, classes, ranks, raw maps) per image for net inputs of one size (views×C×H×W each)."""
        in_graph = self.infer_in_graph(np.concatenate(inputs)) if self.in_graph is not None else None
        if in_graph is not None:
            return in_graph
        views = self.views.count
        batch = np.concatenate(inputs)
        view_probabilities, features = self.infer(batch)
        if features.shape[2] == 0 or features.shape[3] == 0:
            raise self._empty_feature_map(batch, features.shape)
        # Several views of one image: classes are ranked on the averaged probabilities.
        probabilities = view_probabilities.reshape(len(inputs), views, -1).mean(axis=1)
        classes, ranks = self.select_classes(probabilities)
        raw = self.maps(batch, features, view_probabilities, np.repeat(classes, views, axis=0))
        raw = raw.reshape(len(inputs), views, *raw.shape[1:])
        if views == 1:
            raw = raw[:, 0]
        return probabilities, classes, ranks, raw

    def _empty_feature_map(self, batch: np.ndarray, shape: Sequence[int]) -> EmptyFeatureMap:
        return EmptyFeatureMap(
            f"{self.session.source}: a {batch.shape[2]}x{batch.shape[3]} input gives an empty feature map "
            f"{tuple(shape[1:])}; give a larger --input-size"
        )

    def process(
        self, paths: Sequence[Path], stems: Sequence[str], out_dir: Path | None
    ) -> list[ImageOutcome]:
        """Run one batch; an image that cannot be read is reported in its outcome, the rest go on."""
        return self.finish_batch(self.prepare(paths, stems), out_dir)

    def _finish(
        self,
        path: Path,
        stem: str,
        image: np.ndarray,
        probabilities: np.ndarray,
        classes: np.ndarray,
        ranks: np.ndarray,
        raw: np.ndarray,
        out_dir: Path | None,
    ) -> ImageOutcome:
        height, width = image.shape[:2]
        maps = self.to_image_space(raw, height, width) if len(classes) else raw
        rows = []
        base = None
        seen: set[int] = set()
        for j, (class_index, rank) in enumerate(zip(classes, ranks, strict=True)):
            if int(class_index) in seen:
                continue
            seen.add(int(class_index))
            boxes = self.boxer(maps[j])
            box = boxes[0]
            overlay_path = ""
            if out_dir is not None and self.settings.write_overlays:
                if base is None:
                    base = image
                name = f"{stem}_cam.png" if j == 0 else f"{stem}_cam_{int(class_index)}.png"
                text = (
                    f"{self.label(int(class_index))} {float(probabilities[class_index]):.3f} - "
                    f"{METHOD_TITLES.get(self.settings.method, self.settings.method)}"
                )
                write_image_atomic(out_dir / name, overlay(base, maps[j], self.settings.alpha, text, box))
                overlay_path = str(out_dir / name)
            rows.append(
                {
                    "image": str(path),
                    "rank": int(rank),
                    "class_index": int(class_index),
                    "label": self.label(int(class_index)),
                    "probability": float(probabilities[class_index]),
                    "x0": box[0],
                    "y0": box[1],
                    "x1": box[2],
                    "y1": box[3],
                    "overlay": overlay_path,
                    "error": "",
                    "boxes": ";".join(" ".join(str(int(v)) for v in b) for b in boxes),
                }
            )
        if out_dir is not None and self.settings.save_npy:
            from camcaffe.atomic import save_npy_atomic

            save_npy_atomic(out_dir / f"{stem}_cam.npy", raw.astype(np.float32))
        return ImageOutcome(path, stem, rows, cams=raw)


_RUN_TIME_FAILURES = {"Fail", "RuntimeException", "InvalidArgument"}  # onnxruntime's error classes


def _fails_at_run_time(exc: Exception) -> bool:
    """An error onnxruntime raises while running a graph on given inputs (a size the net cannot take), not one
    about the model itself (an invalid graph, a missing file)."""
    kind = type(exc)
    return kind.__module__.startswith("onnxruntime") and kind.__name__ in _RUN_TIME_FAILURES


def _ranking(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes best first, rank of every class (1 = best)) per row; equal scores: the lower index first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, order.shape[1] + 1)[None, :].repeat(len(order), 0), axis=1)
    return order, ranks


def error_row(outcome: ImageOutcome) -> dict:
    return {
        "image": str(outcome.path),
        "rank": "",
        "class_index": "",
        "label": "",
        "probability": "",
        "x0": "",
        "y0": "",
        "x1": "",
        "y1": "",
        "overlay": "",
        "error": outcome.error or "",
        "boxes": "",
    }
