"""What a saliency method explains: a feature tensor and the class scores of any classifier.

CAM needs a GAP + linear head (`cam_head.find_cam_head`); the other methods only need
  - the feature blob: `--feature-layer` (a Caffe blob name resolves to its final value, i.e. after an in-place
    ReLU: `conv5_3` is post-`relu5_3`), else the CAM head's feature when the net has one, else the value of the
    last convolution before the classifier after its in-place activations;
  - the class score: the pre-softmax logits, i.e. the input of the Softmax that produces the probabilities, or
    with `--fc-layer` that layer's output; without a Softmax the net's output itself.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass

import numpy as np
import onnx

from camcaffe.errors import CamHeadError

_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Cast"}
_IN_PLACE = {
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "BatchNormalization",
    "Identity",
    "Dropout",
    "Mul",
    "Add",
    "Cast",
}
# Ops after a feature map that tell its layout: they read (N, C, h, w) ...
_READS_NCHW = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"}
SCORES = ("logit", "prob")


@dataclass(frozen=True)
class Target:
    """The tensors a method reads; duck-types the fields of `CamHead` that the pipeline uses."""

    feature_blob: str  # ONNX tensor of the feature map (N, C, h, w)
    score_tensor: str  # class scores (pre-softmax logits), (N, K) or (N, K, 1, 1)
    prob_output: str | None  # the Softmax output, when the net has one
    num_classes: int
    fc_node: str  # the node producing the scores, for messages
    kind: str = "scores"
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    pool_node: str | None = None
    layout: str = "nchw"  # 'nhwc': the feature tensor is (N, h, w, C)


class _Lookup:
    def __init__(self, model: onnx.ModelProto):
        from camcaffe.explain.cam_head import _known_shapes

        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(i)
        self.constants = {t.name for t in model.graph.initializer}
        self.inputs = {v.name for v in model.graph.input} - self.constants
        self.outputs = [v.name for v in model.graph.output]
        self.shapes = _known_shapes(model)

    def array(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        from onnx import numpy_helper

        for init in self.model.graph.initializer:
            if init.name == tensor:
                return numpy_helper.to_array(init)
        index = self.producer.get(tensor)
        if index is not None and self.nodes[index].op_type == "Constant":
            for attr in self.nodes[index].attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def is_constant(self, tensor: str, depth: int = 0) -> bool:
        """An initializer, or computed from initializers only (Constant, an Identity of a shared weight ...)."""
        if tensor in self.constants:
            return True
        index = self.producer.get(tensor)
        if index is None or depth > 16:
            return False
        return all(self.is_constant(t, depth + 1) for t in self.nodes[index].input if t)

    def label(self, tensor: str) -> str:
        index = self.producer.get(tensor)
        return tensor if index is None else (self.nodes[index].name or tensor)

    def ancestors(self, tensor: str) -> set[str]:
        seen, frontier = {tensor}, [tensor]
        while frontier:
            index = self.producer.get(frontier.pop())
            if index is None:
                continue
            for inp in self.nodes[index].input:
                if inp and inp not in seen and inp not in self.constants:
                    seen.add(inp)
                    frontier.append(inp)
        return seen


def _resolve_name(lookup: _Lookup, blobs: dict[str, str], name: str, what: str) -> str:
    """A Caffe blob name (its final value), an ONNX tensor name, a node (Caffe layer) name, or a framework's
    layer name kept in the node names (`layer4`, `fc`, `block5_conv3`: explain.layer_names)."""
    if name in blobs:
        return blobs[name]
    if name in lookup.producer or name in lookup.inputs:
        return name
    for node in lookup.nodes:
        if node.name == name and node.output:
            return node.output[0]
    from camcaffe.explain.layer_names import layer_output, scope_names

    framework = layer_output(lookup.nodes, lookup.outputs, name, what, before_softmax=what == "fc layer")
    if framework is not None:
        return framework
    pool = sorted(
        set(blobs)
        | set(lookup.producer)
        | {n.name for n in lookup.nodes if n.name}
        | set(scope_names(lookup.nodes))
    )
    close = difflib.get_close_matches(name, pool, n=4, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "list the names with `camcaffe inspect`"
    raise CamHeadError(f"{what} '{name}' is not in the model; {hint}")


def _softmax_outputs(lookup: _Lookup) -> list[int]:
    """Softmax nodes whose output reaches a graph output through reshape-like ops, in graph order."""
    found = []
    outputs = set(lookup.outputs)
    for index, node in enumerate(lookup.nodes):
        if node.op_type != "Softmax":
            continue
        frontier, seen = [node.output[0]], set()
        while frontier:
            tensor = frontier.pop()
            if tensor in outputs:
                found.append(index)
                break
            for consumer in lookup.consumers.get(tensor, []):
                c = lookup.nodes[consumer]
                if _passes(c, _PASS_THROUGH) and c.output[0] not in seen:
                    seen.add(c.output[0])
                    frontier.append(c.output[0])
    return found


def _scores(lookup: _Lookup, blobs: dict[str, str], fc_layer: str | None) -> tuple[str, str | None]:
    """(score tensor, probability tensor or None)."""
    if fc_layer is not None:
        score = _resolve_name(lookup, blobs, fc_layer, "fc layer")
        prob = None
        for index in _softmax_outputs(lookup):
            if lookup.nodes[index].input[0] == score:
                prob = lookup.nodes[index].output[0]
        return score, prob
    softmaxes = _softmax_outputs(lookup)
    if softmaxes:
        node = lookup.nodes[softmaxes[-1]]
        return node.input[0], node.output[0]
    for name in lookup.outputs:
        shape = lookup.shapes.get(name)
        if shape is not None and (len(shape) == 2 or (len(shape) == 4 and tuple(shape[2:]) == (1, 1))):
            return name, None
    raise CamHeadError(
        "found no class scores: the net has no Softmax feeding an output and no (N, K) output; name the "
        "classifier with --fc-layer"
    )


def _keeps_the_map(node: onnx.NodeProto) -> bool:
    """An in-place-like op, or the Transpose to channels-last that Keras / tf2onnx put after every Conv."""
    from camcaffe.explain.cam_head import _attrs

    if node.op_type == "Transpose":
        return list(_attrs(node).get("perm", [])) == [0, 2, 3, 1]
    return _passes(node, _IN_PLACE)


def _last_conv_feature(lookup: _Lookup, score: str) -> str | None:
    """The final value (after in-place activations, and for channels-last nets the bias and activation after the
    Transpose back to channels-last) of the last Conv with a spatial map before `score`."""
    before = lookup.ancestors(score)
    best = None
    for index, node in enumerate(lookup.nodes):
        out = node.output[0] if node.output else ""
        shape = lookup.shapes.get(out)
        # a variable height/width (None) may well be spatial
        spatial = shape is not None and len(shape) == 4 and (None in shape[2:] or shape[2] * shape[3] > 1)
        if node.op_type == "Conv" and out in before and spatial:
            best = index
    if best is None:
        return None
    tensor = lookup.nodes[best].output[0]
    while True:
        consumers = lookup.consumers.get(tensor, [])
        if len(consumers) != 1:
            return tensor
        node = lookup.nodes[consumers[0]]
        others = [t for t in node.input[1:] if t]
        if (
            not _keeps_the_map(node)
            or node.input[0] != tensor
            or not all(lookup.is_constant(t) for t in others)
        ):
            return tensor
        tensor = node.output[0]


def _passes(node: onnx.NodeProto, ops: set[str]) -> bool:
    from camcaffe.explain.cam_head import is_float_cast

    return node.op_type in ops and (node.op_type != "Cast" or is_float_cast(node))


_MAP_OPS = _IN_PLACE | {"Relu", "Sigmoid", "Tanh"}


def _layout_read_after(lookup: _Lookup, tensor: str) -> str | None:
    """The layout the first op after `tensor` (past casts and elementwise ops) reads it in, if it tells: a
    Transpose, a ReduceMean over (1, 2) or (2, 3), a Conv or pooling; else None."""
    from camcaffe.explain.cam_head import _attrs

    frontier, seen = [tensor], {tensor}
    while frontier:
        for index in lookup.consumers.get(frontier.pop(0), []):
            node = lookup.nodes[index]
            attrs = _attrs(node)
            if node.op_type == "Transpose":
                return "nhwc" if list(attrs.get("perm", [])) == [0, 3, 1, 2] else "nchw"
            if node.op_type == "ReduceMean":
                axes = attrs.get("axes")
                if axes is None and len(node.input) > 1:
                    axes = lookup.array(node.input[1])
                return "nhwc" if axes is not None and sorted(int(a) % 4 for a in axes) == [1, 2] else "nchw"
            if node.op_type in _READS_NCHW:
                return "nchw"
            if _passes(node, _MAP_OPS) and node.output[0] not in seen:
                seen.add(node.output[0])
                frontier.append(node.output[0])
    return None


def _layout_made_before(lookup: _Lookup, tensor: str) -> str:
    """'nhwc' when `tensor` comes (past casts and elementwise ops) from a Transpose to channels-last."""
    from camcaffe.explain.cam_head import _attrs

    current = tensor
    for _ in range(len(lookup.nodes)):
        index = lookup.producer.get(current)
        if index is None:
            return "nchw"
        node = lookup.nodes[index]
        if node.op_type == "Transpose":
            return "nhwc" if list(_attrs(node).get("perm", [])) == [0, 2, 3, 1] else "nchw"
        if not _passes(node, _MAP_OPS):
            return "nchw"
        current = node.input[0]
    return "nchw"


def feature_layout(lookup: _Lookup, tensor: str) -> str:
    """'nhwc' when the ops after `tensor` read it channels-last (a Transpose to channels-first, a ReduceMean
    over axes (1, 2)) or, when they do not tell (a Flatten), when it was made by a Transpose to channels-last
    (Keras and tf2onnx after every Conv); else 'nchw'."""
    return _layout_read_after(lookup, tensor) or _layout_made_before(lookup, tensor)


def resolve_target(
    session, feature_layer: str | None = None, fc_layer: str | None = None, score: str = "logit"
) -> Target:
    """The feature tensor and class scores of the model of `session` (a runtime.ModelSession); with
    score='prob' the class score is the Softmax probability instead of the logit."""
    from camcaffe.explain.cam_head import find_cam_head

    if score not in SCORES:
        raise CamHeadError(f"--score {score}: unknown; choose logit or prob")
    lookup = _Lookup(session.model)
    blobs = session.info.blobs
    logits, prob = _scores(lookup, blobs, fc_layer)
    score_tensor = logits
    if score == "prob":
        if prob is None:
            raise CamHeadError(
                f"--score prob: the class scores '{lookup.label(logits)}' feed no Softmax output; use --score logit"
            )
        score_tensor = prob
    if feature_layer is not None:
        feature = _resolve_name(lookup, blobs, feature_layer, "feature layer")
    else:
        feature = None
        with contextlib.suppress(CamHeadError):
            feature = find_cam_head(session.model).feature_blob
        if feature is None or feature not in lookup.ancestors(logits):
            feature = _last_conv_feature(lookup, logits)
        if feature is None:
            raise CamHeadError(
                f"found no convolutional feature map before the scores '{lookup.label(logits)}'; name one with "
                "--feature-layer"
            )
    return _checked_target(lookup, feature, feature_layer or feature, score_tensor, prob)


def _checked_target(lookup: _Lookup, feature: str, name: str, score: str, prob: str | None) -> Target:
    if feature not in lookup.ancestors(score):
        raise CamHeadError(
            f"feature layer '{name}' does not feed the class scores "
            f"'{lookup.label(score)}'; name a blob before the classifier"
        )
    shape = lookup.shapes.get(feature)
    if shape is not None and len(shape) != 4:
        raise CamHeadError(
            f"feature layer '{name}' has shape {tuple(shape)}, not a (N, C, h, w) map; name "
            "a convolutional blob"
        )
    score_shape = lookup.shapes.get(score)
    if score_shape is None or any(d is None for d in score_shape[1:]):
        raise CamHeadError(f"the class scores '{lookup.label(score)}' have no static shape; name --fc-layer")
    num_classes = int(np.prod(score_shape[1:]))
    return Target(
        feature_blob=feature,
        score_tensor=score,
        prob_output=prob,
        num_classes=num_classes,
        fc_node=lookup.label(score),
        layout=feature_layout(lookup, feature),
    )
