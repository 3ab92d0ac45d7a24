"""Find the CAM head of an ONNX classifier by graph structure.

CAM needs a feature map F (N, C, h, w) that is globally averaged and fed to a linear classifier W (K, C)
[+ bias]. Two shapes of graph qualify:

* ``gap_linear``: F -> GlobalAveragePool | AveragePool whose kernel covers the map | ReduceMean over (h, w)
  -> [Flatten | Reshape | Squeeze | Identity | Dropout]* -> Gemm | MatMul [+ Add] | 1x1 Conv -> .. -> output.
  The CAM of class c is W[c] . F.
* ``class_conv`` (SqueezeNet): a 1x1 Conv with K output channels [-> Relu] -> global pooling -> .. -> output.
  Each channel already is a class map, so `weights` is the K x K identity: `cam.compute_cams(F, weights, idx)`
  returns the chosen channels unchanged (`cam.select_class_maps` does the same without the product).

`feature_blob` is always the tensor the pooling reads, i.e. the value after any in-place activation (a Caffe
blob name such as `CAM_conv` in camcaffe's files, or the ReLU layer's name in caffe2onnx's files). Without
overrides the head nearest the graph output whose classifier output reaches a graph output (through
reshapes and Softmax) is taken; SE-style gating blocks do not qualify. The overrides `feature_layer` and
`fc_layer` accept node names, tensor names, Caffe layer names, initializer prefixes (`CAM_fc` matches
`CAM_fc_W`) and the layer names of other frameworks that their exporters keep (`layer4`, `block5_conv3`: see
`layer_names`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from camcaffe.errors import CamHeadError

if TYPE_CHECKING:
    import onnx

_ATTRIBUTE_TENSOR = 4  # AttributeProto.TENSOR
_EXTERNAL = 1  # TensorProto.EXTERNAL

CamKind = Literal["gap_linear", "class_conv"]

_RESHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Cast"}
_POOL_OPS = {"GlobalAveragePool", "AveragePool", "ReduceMean"}
_CLASSIFIER_OPS = {"Gemm", "MatMul", "Conv"}
# Ops that keep the feature map's layout; a Caffe in-place chain (conv -> BN -> Scale -> ReLU on one blob)
# becomes such a chain in ONNX, so a user naming the Caffe blob may point at any link of it.
_ACTIVATION_OPS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Sigmoid", "Tanh"}
_ELEMENTWISE_OPS = _ACTIVATION_OPS | {
    "Identity",
    "Dropout",
    "BatchNormalization",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "Cast",
}
# TensorProto float types (FLOAT, FLOAT16, DOUBLE, BFLOAT16): a Cast between them keeps the values' meaning.
FLOAT_TYPES = {1, 10, 11, 16}
Layout = Literal["nchw", "nhwc"]
_CLASS_MAP_ACTIVATIONS = {"Relu", "Identity", "Dropout"}
_PARAM_SUFFIX = re.compile(r"^[_./:](w|weight|weights|b|bias|biases|kernel|\d+)$", re.IGNORECASE)
EXPORTED_CAM_KEY = "camcaffe.cam_outputs"  # cam_export.METADATA_KEY: a model with in-graph CAM outputs
EXPORTED_CAM_PREFIX = "cam/"  # the names of the nodes cam_export adds
_SMALL_CONSTANT_BYTES = 4096  # constants kept for shape inference (Reshape shapes, Squeeze axes ...)


@dataclass(frozen=True)
class CamHead:
    """What CAM needs from a classifier: the feature tensor to fetch and the linear map on its mean."""

    feature_blob: str
    weights: np.ndarray  # (K, C) float32; identity (K, K) for kind 'class_conv'
    bias: np.ndarray | None  # (K,) float32
    kind: CamKind
    fc_node: str  # the classifier node (Gemm/MatMul/Conv), or the class Conv for 'class_conv'
    num_classes: int
    prob_output: str | None  # the Softmax output fed by the classifier, if any
    pool_node: str | None = None
    # The class scores the probabilities are the softmax of: the classifier's output ('gap_linear') or the
    # pooled class maps ('class_conv'), (N, K) or (N, K, 1, 1); None when not known.
    logits: str | None = None
    layout: Layout = "nchw"  # 'nhwc': the feature tensor is (N, h, w, C) (Keras, tf2onnx)


def producers_and_consumers(nodes) -> tuple[dict[str, int], dict[str, list[int]]]:
    """{tensor: index of the node writing it}, {tensor: indices of the nodes reading it}."""
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
        for inp in node.input:
            if inp:
                consumers.setdefault(inp, []).append(i)
    return producer, consumers


class _Graph:
    """Lookup tables over a graph: producers, consumers, constants and known shapes."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.name = graph.name or "model"
        self.nodes = list(graph.node)
        if any(entry.key == EXPORTED_CAM_KEY for entry in model.metadata_props):
            # export-cam's own nodes (the softmax it adds to a model without one, ...) are not the model's head
            self.nodes = [node for node in self.nodes if not node.name.startswith(EXPORTED_CAM_PREFIX)]
        self.producer, self.consumers = producers_and_consumers(self.nodes)
        self.constants: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == _ATTRIBUTE_TENSOR:
                        self.constants[node.output[0]] = attr.t
        self.graph_inputs = {v.name for v in graph.input}
        self.graph_outputs = {v.name for v in graph.output}
        self.shapes = _known_shapes(model)
        self._arrays: dict[str, np.ndarray] = {}

    def node_label(self, index: int) -> str:
        node = self.nodes[index]
        return node.name or (node.output[0] if node.output else f"#{index}")

    def consumers_of(self, tensor: str) -> list[int]:
        return self.consumers.get(tensor, [])

    def producer_of(self, tensor: str) -> int | None:
        return self.producer.get(tensor)

    def constant(self, name: str) -> np.ndarray | None:
        if name in self._arrays:
            return self._arrays[name]
        tensor = self.constants.get(name)
        if tensor is None:
            return None
        try:
            array = tensor_array(tensor)
        except Exception as exc:  # external data not loaded, unsupported type ...
            raise CamHeadError(
                f"cannot read initializer '{name}' of {self.name} ({exc}); load the model with its weights"
            ) from None
        self._arrays[name] = array
        return array

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def tensor_names(self) -> set[str]:
        return set(self.producer) | self.graph_inputs


def _without_large_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with large initializers replaced by typed inputs: shape inference stays fast and works on
    models over 2 GB or with external data that was not loaded."""
    import onnx

    graph = model.graph
    declared = {v.name for v in graph.input}
    small, stubs = [], []
    for init in graph.initializer:
        if init.data_location != _EXTERNAL and init.ByteSize() <= _SMALL_CONSTANT_BYTES:
            small.append(init)
        elif init.name not in declared:
            stubs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light_graph = onnx.helper.make_graph(
        list(graph.node),
        graph.name,
        [*graph.input, *stubs],
        list(graph.output),
        small,
        value_info=graph.value_info,
    )
    light = onnx.helper.make_model(light_graph, opset_imports=list(model.opset_import))
    light.ir_version = model.ir_version
    return light


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Tensor name -> shape (None for unknown dims), from shape inference where it works, else value_info."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(
            _without_large_constants(model), check_type=False, strict_mode=False
        )
    except Exception:
        inferred = model
    graph = inferred.graph
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor_type.shape.dim
            )
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def is_float_cast(node) -> bool:
    """A Cast from a float type to a float type (Keras on the torch backend wraps every op in such casts)."""
    return node.op_type == "Cast" and int(_attrs(node).get("to", 0)) in FLOAT_TYPES


def _passes(node, ops: set[str]) -> bool:
    """node is one of `ops`, a Cast only when it casts to a float type."""
    return node.op_type in ops and (node.op_type != "Cast" or is_float_cast(node))


# TensorProto.DataType -> numpy dtype, for the types classifier weights come in.
_NUMPY_TYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}
_TYPED_FIELDS = {1: "float_data", 6: "int32_data", 7: "int64_data", 11: "double_data"}


def tensor_array(tensor) -> np.ndarray:
    """A TensorProto's values as numpy (what onnx.numpy_helper.to_array gives for these types), for both the
    onnx package's and camcaffe's lite TensorProto."""
    dtype = _NUMPY_TYPES.get(int(tensor.data_type))
    if dtype is None or tensor.data_location == _EXTERNAL:
        from onnx import numpy_helper

        return numpy_helper.to_array(tensor)
    shape = tuple(int(d) for d in tensor.dims)
    if tensor.raw_data:
        return (
            np.frombuffer(tensor.raw_data, dtype=np.dtype(dtype).newbyteorder("<"))
            .astype(dtype)
            .reshape(shape)
        )
    if int(tensor.data_type) == 10:  # float16 values travel in int32_data as bit patterns
        return np.asarray(tensor.int32_data, np.uint16).view(np.float16).reshape(shape)
    return np.asarray(getattr(tensor, _TYPED_FIELDS[int(tensor.data_type)]), dtype).reshape(shape)


def head_from_metadata(session) -> CamHead | None:
    """The CAM head that `camcaffe convert` recorded in the model's metadata, checked against the graph, with
    the classifier weights read from the lite model (no onnx import, no shape inference). None when the
    model carries no such record or the record does not match the graph (then the graph is analysed)."""
    record = session.info.cam_head
    if not isinstance(record, dict):
        return None
    graph = session.lite.graph
    nodes = {node.name: node for node in graph.node}
    produced = {out for node in graph.node for out in node.output}
    feature = record.get("feature_tensor")
    fc_name = record.get("fc_layer")
    kind = record.get("kind")
    try:
        classes = int(record.get("num_classes"))
    except (TypeError, ValueError):
        return None
    if feature not in produced or fc_name not in nodes or kind not in ("gap_linear", "class_conv"):
        return None
    prob_blob = record.get("prob_blob")
    prob = session.info.blobs.get(prob_blob) if prob_blob else None
    if prob_blob and prob not in produced:
        return None
    if kind == "class_conv":  # the map of class k is channel k of the class convolution's (final) output
        if nodes[fc_name].op_type != "Conv":
            return None
        pool = nodes.get(record.get("pool_layer"))
        pooled = pool.output[0] if pool is not None and pool.op_type in _POOL_OPS and pool.output else None
        return CamHead(
            feature,
            np.eye(classes, dtype=np.float32),
            None,
            "class_conv",
            fc_name,
            classes,
            prob,
            logits=pooled,
        )
    inits = {t.name: t for t in graph.initializer}
    weight_name, bias_name = record.get("weights"), record.get("bias")
    if weight_name not in inits or (bias_name is not None and bias_name not in inits):
        return None
    if inits[weight_name].data_location == _EXTERNAL:
        return None
    node = nodes[fc_name]
    weights = tensor_array(inits[weight_name]).astype(np.float32)
    if node.op_type == "Conv":
        weights = weights.reshape(weights.shape[0], -1)
    elif node.op_type == "Gemm":
        options = {a.name: a.i for a in node.attribute}
        if options.get("transA", 0):
            return None
        if not options.get("transB", 0):  # (C, K): InnerProduct with transpose: true
            weights = weights.T
    elif node.op_type == "MatMul":
        weights = weights.T
    else:
        return None
    if weights.ndim != 2 or weights.shape[0] != classes:
        return None
    weights = np.ascontiguousarray(weights)
    bias = tensor_array(inits[bias_name]).astype(np.float32).reshape(-1) if bias_name else None
    if bias is not None and bias.shape != (classes,):
        return None
    logits = node.output[0] if node.op_type in ("Gemm", "Conv") and node.output else None
    return CamHead(feature, weights, bias, "gap_linear", fc_name, classes, prob, logits=logits)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def _pool_check(g: _Graph, index: int) -> str | None:
    """None when node `index` averages its whole (h, w) map into 1x1, else why not."""
    node = g.nodes[index]
    label = g.node_label(index)
    shape = g.shapes.get(node.input[0]) if node.input else None
    if shape is not None and len(shape) != 4:
        return f"{node.op_type} '{label}' reads a {len(shape)}-D tensor, CAM needs a 4-D feature map"
    if node.op_type == "GlobalAveragePool":
        return None
    attrs = _attrs(node)
    if node.op_type == "ReduceMean":
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            const = g.constant(node.input[1])
            axes = None if const is None else const.tolist()
        if axes is not None and sorted(int(a) % 4 for a in axes) in ([2, 3], [1, 2]):
            return None
        return f"ReduceMean '{label}' does not average over the spatial axes (2, 3) or, channels-last, (1, 2)"
    if node.op_type != "AveragePool":
        return f"'{label}' is a {node.op_type}, not an average pooling"
    kernel = [int(k) for k in attrs.get("kernel_shape", [])]
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if any(pads) or auto_pad not in ("NOTSET", "VALID"):
        return f"AveragePool '{label}' pads its input, so it is not a plain mean over the map"
    if shape is None or shape[2] is None or shape[3] is None:
        return f"AveragePool '{label}': its input's spatial size is unknown, cannot tell if it covers the map"
    if kernel != [shape[2], shape[3]]:
        return f"AveragePool '{label}' kernel {kernel} does not cover its {shape[2]}x{shape[3]} input"
    out_shape = g.shapes.get(node.output[0])
    if out_shape is not None and len(out_shape) == 4 and any(d not in (1, None) for d in out_shape[2:]):
        return f"AveragePool '{label}' output is {out_shape[2]}x{out_shape[3]}, not 1x1"
    return None


def _reduce_axes(g: _Graph, node) -> list[int] | None:
    axes = _attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        const = g.constant(node.input[1])
        axes = None if const is None else const.tolist()
    return None if axes is None else sorted(int(a) % 4 for a in axes)


def _pool_layout(g: _Graph, index: int) -> Layout:
    """'nhwc' for a ReduceMean over axes (1, 2) of a 4-D map (channels-last global average pooling)."""
    node = g.nodes[index]
    return "nhwc" if node.op_type == "ReduceMean" and _reduce_axes(g, node) == [1, 2] else "nchw"


def _reshape_closure(g: _Graph, tensor: str) -> list[str]:
    """tensor plus every tensor reached from it through reshape-like ops only."""
    seen = [tensor]
    frontier = [tensor]
    while frontier:
        current = frontier.pop()
        for index in g.consumers_of(current):
            node = g.nodes[index]
            if _passes(node, _RESHAPE_OPS) and node.input and node.input[0] == current and node.output:
                out = node.output[0]
                if out not in seen:
                    seen.append(out)
                    frontier.append(out)
    return seen


def _trace_back_reshapes(g: _Graph, tensor: str) -> str:
    """Follow reshape-like producers backwards; returns the first tensor not made by one."""
    current = tensor
    for _ in range(len(g.nodes) + 1):
        index = g.producer_of(current)
        if index is None or not _passes(g.nodes[index], _RESHAPE_OPS):
            return current
        current = g.nodes[index].input[0]
    return current


@dataclass(frozen=True)
class _Linear:
    node_index: int
    output: str  # the logits tensor (after the bias Add for MatMul)
    weights: np.ndarray  # (K, C)
    bias: np.ndarray | None


def _as_bias(values: np.ndarray, num_classes: int) -> np.ndarray | None:
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 1:
        return np.full(num_classes, flat[0], dtype=np.float32)
    if flat.size == num_classes:
        return flat
    return None


def _linear_from_node(g: _Graph, index: int, data_tensor: str) -> _Linear | str:
    """The classifier weights of node `index` applied to data_tensor, or why it is not a linear classifier."""
    node = g.nodes[index]
    label = g.node_label(index)
    if not node.input or node.input[0] != data_tensor:
        return f"{node.op_type} '{label}' does not take the pooled tensor as its data input"
    if node.op_type == "Gemm":
        return _linear_from_gemm(g, index)
    if node.op_type == "MatMul":
        return _linear_from_matmul(g, index)
    if node.op_type == "Conv":
        return _linear_from_conv(g, index)
    return f"'{label}' is a {node.op_type} node, not a Gemm, MatMul or 1x1 Conv classifier"


def _linear_from_gemm(g: _Graph, index: int) -> _Linear | str:
    node = g.nodes[index]
    label = g.node_label(index)
    attrs = _attrs(node)
    b = g.constant(node.input[1]) if len(node.input) > 1 else None
    if b is None or b.ndim != 2:
        return f"Gemm '{label}' has no constant 2-D weight matrix"
    if int(attrs.get("transA", 0)):
        return f"Gemm '{label}' transposes its input (transA=1)"
    weights = b if int(attrs.get("transB", 0)) else b.T
    weights = (float(attrs.get("alpha", 1.0)) * weights.astype(np.float64)).astype(np.float32)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = g.constant(node.input[2])
        if c is None:
            return f"Gemm '{label}' has a bias that is not a constant"
        bias = _as_bias(float(attrs.get("beta", 1.0)) * c.astype(np.float64), weights.shape[0])
        if bias is None:
            return f"Gemm '{label}' bias shape {c.shape} does not fit {weights.shape[0]} classes"
    return _Linear(index, node.output[0], np.ascontiguousarray(weights), bias)


def _linear_from_matmul(g: _Graph, index: int) -> _Linear | str:
    node = g.nodes[index]
    label = g.node_label(index)
    b = g.constant(node.input[1]) if len(node.input) > 1 else None
    if b is None or b.ndim != 2:
        return f"MatMul '{label}' has no constant 2-D weight matrix"
    weights = np.ascontiguousarray(b.T, dtype=np.float32)
    output, bias = node.output[0], None
    casts = [i for i in g.consumers_of(output) if is_float_cast(g.nodes[i])]
    if len(g.consumers_of(output)) == 1 and casts:  # MatMul -> Cast -> Add (Keras on the torch backend)
        output = g.nodes[casts[0]].output[0]
    for add_index in g.consumers_of(output):
        add = g.nodes[add_index]
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        other = add.input[1] if add.input[0] == output else add.input[0]
        const = g.constant(other)
        if const is not None:
            bias = _as_bias(const, weights.shape[0])
            if bias is not None:
                output = add.output[0]
                break
    return _Linear(index, output, weights, bias)


def _conv_weights(g: _Graph, index: int) -> tuple[np.ndarray, np.ndarray | None] | str:
    """(W (K, C), bias (K,) | None) of a 1x1, group-1 Conv with constant weights, or why not."""
    node = g.nodes[index]
    label = g.node_label(index)
    w = g.constant(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 4:
        return f"Conv '{label}' has no constant 4-D weights"
    if w.shape[2:] != (1, 1):
        return f"Conv '{label}' has a {w.shape[2]}x{w.shape[3]} kernel, not 1x1"
    if int(_attrs(node).get("group", 1)) != 1:
        return f"Conv '{label}' is a grouped convolution"
    bias = None
    if len(node.input) > 2 and node.input[2]:
        b = g.constant(node.input[2])
        if b is None:
            return f"Conv '{label}' has a bias that is not a constant"
        bias = _as_bias(b, w.shape[0])
    return np.ascontiguousarray(w[:, :, 0, 0], dtype=np.float32), bias


def _linear_from_conv(g: _Graph, index: int) -> _Linear | str:
    node = g.nodes[index]
    found = _conv_weights(g, index)
    if isinstance(found, str):
        return found
    if any(int(p) for p in _attrs(node).get("pads", [])):
        return f"Conv '{g.node_label(index)}' pads the pooled 1x1 map"
    weights, bias = found
    return _Linear(index, node.output[0], weights, bias)


def _forward_to_output(g: _Graph, tensor: str) -> tuple[bool, str | None]:
    """(reaches a graph output, Softmax output) following reshape-like ops and Softmax from tensor."""
    reaches, prob = False, None
    seen = {tensor}
    frontier = [tensor]
    while frontier:
        current = frontier.pop()
        if current in g.graph_outputs:
            reaches = True
        for index in g.consumers_of(current):
            node = g.nodes[index]
            if not _passes(node, _RESHAPE_OPS | {"Softmax", "LogSoftmax"}) or not node.output:
                continue
            if node.input[0] != current:
                continue
            out = node.output[0]
            if node.op_type == "Softmax" and prob is None:
                prob = out
            if out not in seen:
                seen.add(out)
                frontier.append(out)
    return reaches, prob


def _class_conv_before(g: _Graph, tensor: str) -> int | None:
    """Index of the 1x1 Conv that produces `tensor` directly or through Relu/Identity/Dropout, else None."""
    current = tensor
    for _ in range(len(g.nodes) + 1):
        index = g.producer_of(current)
        if index is None:
            return None
        node = g.nodes[index]
        if node.op_type == "Conv":
            return index if not isinstance(_conv_weights(g, index), str) else None
        if not _passes(node, _CLASS_MAP_ACTIVATIONS | {"Cast"}):
            return None
        current = node.input[0]
    return None


# ----------------------------------------------------------------------------------------------------------
# Heads


def _feature_channels(g: _Graph, tensor: str, layout: Layout = "nchw") -> int | None:
    shape = g.shapes.get(tensor)
    return shape[3 if layout == "nhwc" else 1] if shape is not None and len(shape) == 4 else None


def _check_channels(g: _Graph, head: CamHead) -> CamHead:
    channels = _feature_channels(g, head.feature_blob, head.layout)
    if channels is not None and channels != head.weights.shape[1]:
        raise CamHeadError(
            f"feature '{head.feature_blob}' has {channels} channels but classifier '{head.fc_node}' expects "
            f"{head.weights.shape[1]}; name a feature layer and fc layer that belong together"
        )
    return head


def _linear_heads_after_pool(g: _Graph, pool_index: int) -> tuple[list[tuple[CamHead, bool]], list[str]]:
    """Linear classifiers fed by the pool node: [(head, reaches an output)], and why others were rejected."""
    pool = g.nodes[pool_index]
    heads: list[tuple[CamHead, bool]] = []
    reasons: list[str] = []
    for tensor in _reshape_closure(g, pool.output[0]):
        for index in g.consumers_of(tensor):
            if g.nodes[index].op_type not in _CLASSIFIER_OPS:
                continue
            linear = _linear_from_node(g, index, tensor)
            if isinstance(linear, str):
                reasons.append(linear)
                continue
            reaches, prob = _forward_to_output(g, linear.output)
            head = CamHead(
                feature_blob=pool.input[0],
                weights=linear.weights,
                bias=linear.bias,
                kind="gap_linear",
                fc_node=g.node_label(index),
                num_classes=int(linear.weights.shape[0]),
                prob_output=prob,
                pool_node=g.node_label(pool_index),
                logits=linear.output,
                layout=_pool_layout(g, pool_index),
            )
            heads.append((head, reaches))
    return heads, reasons


def _class_conv_head(g: _Graph, pool_index: int) -> tuple[CamHead, bool] | None:
    pool = g.nodes[pool_index]
    conv_index = _class_conv_before(g, pool.input[0])
    if conv_index is None:
        return None
    num_classes = int(g.constant(g.nodes[conv_index].input[1]).shape[0])
    reaches, prob = _forward_to_output(g, pool.output[0])
    head = CamHead(
        feature_blob=pool.input[0],
        weights=np.eye(num_classes, dtype=np.float32),
        bias=None,
        kind="class_conv",
        fc_node=g.node_label(conv_index),
        num_classes=num_classes,
        prob_output=prob,
        pool_node=g.node_label(pool_index),
        logits=pool.output[0],
    )
    return head, reaches


def _heads_at_pool(g: _Graph, pool_index: int) -> tuple[list[tuple[CamHead, bool]], list[str]]:
    linear, reasons = _linear_heads_after_pool(g, pool_index)
    if linear:
        return linear, reasons
    class_conv = _class_conv_head(g, pool_index)
    if class_conv is not None:
        return [class_conv], reasons
    reasons.append(
        f"pooling '{g.node_label(pool_index)}' feeds no linear classifier and reads no 1x1 class Conv"
    )
    return [], reasons


def _pool_indices(g: _Graph) -> tuple[list[int], list[str]]:
    pools, reasons = [], []
    for index, node in enumerate(g.nodes):
        if node.op_type not in _POOL_OPS or not node.input or not node.output:
            continue
        why = _pool_check(g, index)
        if why is None:
            pools.append(index)
        elif node.op_type != "ReduceMean":
            reasons.append(why)
    return pools, reasons


def _auto_detect(g: _Graph) -> CamHead:
    pools, reasons = _pool_indices(g)
    best: CamHead | None = None
    for pool_index in pools:  # nodes are in topological order: the last qualifying head is nearest the output
        heads, why = _heads_at_pool(g, pool_index)
        reasons.extend(why)
        for head, reaches in heads:
            if reaches:
                best = head
            else:
                reasons.append(
                    f"classifier '{head.fc_node}' after '{head.pool_node}' does not feed a graph output"
                )
    if best is None:
        detail = "; ".join(dict.fromkeys(reasons)) or "the graph has no average pooling"
        raise CamHeadError(
            f"no CAM head found in {g.name}: looked for a 4-D feature map -> GlobalAveragePool or an "
            "AveragePool covering the map -> [Flatten/Reshape] -> Gemm/MatMul/1x1 Conv feeding the output, "
            f"or a 1x1 class Conv -> [Relu] -> global pooling ({detail}); name them with --feature-layer and "
            "--fc-layer"
        )
    return _check_channels(g, best)


# ----------------------------------------------------------------------------------------------------------
# Overrides


def _name_pool(g: _Graph) -> list[str]:
    from camcaffe.explain.layer_names import scope_names

    names = set(g.tensor_names())
    names.update(node.name for node in g.nodes if node.name)
    names.update(scope_names(g.nodes))
    for init in g.constants:
        names.add(init)
        match = re.match(r"^(.*?)[_./:](w|weight|weights|b|bias|biases|kernel)$", init, re.IGNORECASE)
        if match and match.group(1):
            names.add(match.group(1))
    return sorted(names)


def _not_found(g: _Graph, what: str, name: str) -> CamHeadError:
    close = difflib.get_close_matches(name, _name_pool(g), n=5, cutoff=0.5)
    hint = f"closest names: {', '.join(close)}" if close else "list the names with `camcaffe inspect`"
    return CamHeadError(f"{what} '{name}' is not in {g.name}; {hint}")


def _resolve_feature_tensor(g: _Graph, name: str) -> str:
    if name in g.producer or name in g.graph_inputs:
        return name
    for node in g.nodes:
        if node.name == name and node.output:
            return node.output[0]
    tensor = _framework_layer(g, name, "feature layer")
    if tensor is not None:
        return tensor
    raise _not_found(g, "feature layer", name)


def _framework_layer(g: _Graph, name: str, what: str) -> str | None:
    """The output of a framework layer named in the node names (`layer4`, `fc`, `block5_conv3`), or None."""
    from camcaffe.explain.layer_names import layer_output

    return layer_output(g.nodes, sorted(g.graph_outputs), name, what, before_softmax=what == "fc layer")


def _pools_from_feature(g: _Graph, tensor: str) -> list[int]:
    """Covering pool nodes reached from tensor through elementwise (in-place-like) ops, nearest first."""
    found: list[int] = []
    seen = {tensor}
    frontier = [tensor]
    while frontier:
        current = frontier.pop(0)
        for index in g.consumers_of(current):
            node = g.nodes[index]
            if node.op_type in _POOL_OPS and node.input[0] == current:
                if _pool_check(g, index) is None and index not in found:
                    found.append(index)
                continue
            if not _passes(node, _ELEMENTWISE_OPS) or not node.output:
                continue
            others = [t for t in node.input[1:] if t and t != current]
            if node.op_type in {"Mul", "Add", "Sub", "Div"} and not all(g.is_constant(t) for t in others):
                continue
            if node.input[0] != current and node.op_type not in {"Mul", "Add"}:
                continue
            out = node.output[0]
            if out not in seen:
                seen.add(out)
                frontier.append(out)
    return found


def _fc_matches(g: _Graph, index: int, name: str) -> bool:
    node = g.nodes[index]
    if node.name == name or name in node.output:
        return True
    for inp in node.input[1:]:
        if (
            inp in g.constants
            and inp.startswith(name)
            and (inp == name or _PARAM_SUFFIX.match(inp[len(name) :]))
        ):
            return True
    return False


def _resolve_fc_node(g: _Graph, name: str) -> int:
    matches = [i for i in range(len(g.nodes)) if _fc_matches(g, i, name)]
    if not matches:
        tensor = _framework_layer(g, name, "fc layer")
        if tensor is not None and g.producer_of(tensor) is not None:
            matches = [g.producer_of(tensor)]
    classifier = [i for i in matches if g.nodes[i].op_type in _CLASSIFIER_OPS]
    if not classifier:
        # a MatMul + Add classifier may be named by its Add
        for i in matches:
            node = g.nodes[i]
            if node.op_type == "Add":
                for inp in node.input:
                    producer = g.producer_of(inp)
                    if producer is not None and g.nodes[producer].op_type == "MatMul":
                        classifier.append(producer)
    if classifier:
        return classifier[0]
    if matches:
        node = g.nodes[matches[0]]
        raise CamHeadError(
            f"fc layer '{name}' is a {node.op_type} node in {g.name}; name the InnerProduct classifier "
            "(Gemm, MatMul or 1x1 Conv) that follows the global pooling"
        )
    raise _not_found(g, "fc layer", name)


def _head_for_fc(g: _Graph, fc_index: int) -> CamHead:
    node = g.nodes[fc_index]
    label = g.node_label(fc_index)
    source = _trace_back_reshapes(g, node.input[0])
    pool_index = g.producer_of(source)
    if pool_index is not None and g.nodes[pool_index].op_type in _POOL_OPS:
        why = _pool_check(g, pool_index)
        if why is not None:
            raise CamHeadError(f"fc layer '{label}' is fed by a pooling that is not global: {why}")
        heads, reasons = _linear_heads_after_pool(g, pool_index)
        for head, _ in heads:
            if head.fc_node == label:
                return head
        raise CamHeadError(f"fc layer '{label}' is not a linear classifier: {'; '.join(reasons)}")
    if node.op_type == "Conv":
        for pool in _pools_from_feature(g, node.output[0]):
            head = _class_conv_head(g, pool)
            if head is not None and head[0].fc_node == label:
                return head[0]
    raise CamHeadError(
        f"fc layer '{label}' ({node.op_type}) is not fed by a global average pooling, nor a 1x1 class Conv "
        "before one; CAM needs feature map -> global average pool -> classifier"
    )


def _head_for_feature(g: _Graph, name: str, tensor: str) -> CamHead:
    pools = _pools_from_feature(g, tensor)
    if not pools:
        raise CamHeadError(
            f"feature layer '{name}' does not feed a global average pooling in {g.name} (directly or through "
            "in-place activations); CAM needs feature map -> global average pool -> classifier"
        )
    reasons: list[str] = []
    for pool_index in pools:
        heads, why = _heads_at_pool(g, pool_index)
        reasons.extend(why)
        if heads:
            reaching = [head for head, reaches in heads if reaches]
            return (reaching or [heads[0][0]])[-1]
    raise CamHeadError(f"feature layer '{name}' has no classifier after its pooling: {'; '.join(reasons)}")


def find_cam_head(
    model: onnx.ModelProto, feature_layer: str | None = None, fc_layer: str | None = None
) -> CamHead:
    """Locate the CAM head of `model`; feature_layer / fc_layer pin either end by name.

    Raises CamHeadError when a name is not in the model (suggesting the closest ones), when the named layers
    do not form a CAM head, or when none is found."""
    g = _Graph(model)
    if feature_layer is None and fc_layer is None:
        return _auto_detect(g)
    fc_head = _head_for_fc(g, _resolve_fc_node(g, fc_layer)) if fc_layer is not None else None
    if feature_layer is None:
        return _check_channels(g, fc_head)
    tensor = _resolve_feature_tensor(g, feature_layer)
    if fc_head is not None:
        if tensor == fc_head.feature_blob or fc_head.pool_node in {
            g.node_label(i) for i in _pools_from_feature(g, tensor)
        }:
            return _check_channels(g, fc_head)
        raise CamHeadError(
            f"feature layer '{feature_layer}' does not feed fc layer '{fc_layer}' through its global pooling "
            f"(that classifier pools '{fc_head.feature_blob}'); name a matching pair or just one of them"
        )
    return _check_channels(g, _head_for_feature(g, feature_layer, tensor))


def describe(head: CamHead) -> str:
    """One line for logs: kind, feature tensor, classifier and class count."""
    prob = f", probabilities '{head.prob_output}'" if head.prob_output else ""
    return (
        f"CAM head ({head.kind}): feature '{head.feature_blob}' -> pool '{head.pool_node}' -> "
        f"'{head.fc_node}' with {head.num_classes} classes x {head.weights.shape[1]} channels{prob}"
    )
