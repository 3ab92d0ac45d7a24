"""Gradients without a training framework: the backward graph of a net's tail, as ONNX nodes.

`build_tail(model, feature, score)` cuts the part of `model` that turns the tensor `feature` into the tensor
`score` (the "tail": e.g. pooling and the fully connected layers after a last convolution) and writes it as a
standalone ONNX model whose inputs are the feature (plus any other tensor of the net the tail reads, and a
`seed`) and whose outputs are the score and d(seed . score)/d feature. The backward part is reverse-mode
differentiation spelled in ONNX ops, one rule per forward op (`_RULES`), so it runs in the same onnxruntime
provider as the net (CPU or CUDA) and only the tail is recomputed:

  Gemm/MatMul -> products with the transposed weights;  Relu/LeakyRelu/PRelu/Elu -> masks (Where);
  MaxPool -> the pooling indices (second output) and ScatterElements(reduction=add), which, unlike
  MaxUnpool, adds up gradients where overlapping windows (AlexNet's 3x3 stride 2) picked the same input;
  AveragePool -> gradient / window count (precomputed per output position, counting padding as the op does)
  spread back by a depthwise ConvTranspose of ones;  GlobalAveragePool -> Expand / (h w) (at run time for a variable size);
  Conv -> ConvTranspose with the same weights (output_padding restores the input size) and back;
  LRN (across channels) -> the closed form with the channel-window sums done by a 1-D Conv of ones;
  Softmax/LogSoftmax -> y (dy - sum(dy y));  Concat <-> Split, Slice <-> Pad, reshapes -> Reshape to the
  input's shape;  Add/Sub/Mul/Div/Sum/Max/Pow/Sigmoid/Tanh/Exp/Log/Abs/Sqrt/Neg elementwise rules with
  broadcast gradients summed back;  BatchNormalization (inference) -> a per-channel factor.

Anything else on a path from the feature to the score is refused by name (`GradientError`).

`reverse_mode` applies the same rules to a chosen part of a graph from several seeds (pycaffe's backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from camcaffe.errors import OnnxModelError

SEED = "backward/seed"
GRADIENT = "backward/gradient"
_MIN_OPSET = 13


class GradientError(OnnxModelError):
    """A layer after the feature blob cannot be differentiated, or the tail cannot be cut out."""


@dataclass
class TailModel:
    """A standalone model computing the tail of a net (and, with `gradient`, its backward)."""

    model: onnx.ModelProto
    feature: str  # input: the feature tensor
    score: str  # output: the score tensor
    seed: str | None  # input (gradient models): d loss / d score, the score's shape
    gradient: str | None  # output (gradient models): d loss / d feature
    side_inputs: list[str] = field(default_factory=list)  # other tensors of the net the tail reads
    score_shape: tuple[int | None, ...] = ()
    feature_shape: tuple[int | None, ...] = ()


# ------------------------------------------------------------------------------------------------------
# Graph lookups


class _Net:
    def __init__(self, model: onnx.ModelProto):
        from camcaffe.explain.cam_head import _known_shapes, producers_and_consumers

        graph = model.graph
        self.model = model
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer, self.consumers = producers_and_consumers(self.nodes)
        self.shapes = _known_shapes(model)
        self._constant_cache: dict[str, bool] = {}

    def label(self, index: int) -> str:
        node = self.nodes[index]
        return f"'{node.name or node.output[0]}' ({node.op_type})"

    def is_constant(self, tensor: str) -> bool:
        """An initializer, or computed from initializers only (Constant nodes, shape arithmetic)."""
        if tensor in self.initializers:
            return True
        if tensor in self._constant_cache:
            return self._constant_cache[tensor]
        self._constant_cache[tensor] = False  # cycles cannot happen; this guards recursion depth
        index = self.producer.get(tensor)
        result = index is not None and all(not t or self.is_constant(t) for t in self.nodes[index].input)
        self._constant_cache[tensor] = result
        return result

    def array(self, tensor: str) -> np.ndarray | None:
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        index = self.producer.get(tensor)
        if index is not None and self.nodes[index].op_type == "Constant":
            for attr in self.nodes[index].attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def descendants(self, tensor: str, differentiable: bool = False) -> set[str]:
        """Tensors computed from `tensor`; with `differentiable`, only through ops that pass on a gradient (not
        Shape/Size and the shape arithmetic on their outputs)."""
        seen = {tensor}
        frontier = [tensor]
        while frontier:
            current = frontier.pop()
            for index in self.consumers.get(current, []):
                node = self.nodes[index]
                if differentiable and node.op_type in _NO_GRADIENT_OPS:
                    continue
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        frontier.append(out)
        return seen


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


_NO_GRADIENT_OPS = {"Shape", "Size"}  # their outputs (and the shape arithmetic on them) carry no gradient
_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_BOOLEAN_OPS = {"Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor"}


# ------------------------------------------------------------------------------------------------------
# Emitting nodes


class _Emitter:
    def __init__(self, net: _Net):
        self.net = net
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self.prefix = "backward"
        self._zero: str | None = None

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs) -> str:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names  # type: ignore[return-value]

    def ops(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs) -> list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint, np.int64)

    @property
    def zero(self) -> str:
        if self._zero is None:
            self._zero = self.const(np.float32(0), "zero")
        return self._zero

    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        return self.net.shapes.get(tensor)

    def static(self, tensor: str, axes: Sequence[int], why: str) -> list[int]:
        shape = self.shape(tensor)
        if shape is None or any(a >= len(shape) or shape[a] is None for a in axes):
            raise _Refusal(f"needs the static size of '{tensor}' ({why}), which shape inference did not find")
        return [int(shape[a]) for a in axes]

    def reshape_like(self, value: str, like: str) -> str:
        return self.op("Reshape", [value, self.op("Shape", [like])])

    def unbroadcast(self, grad: str, operand: str, output: str) -> str:
        """Sum `grad` (output's shape) back to the operand's shape where the operand was broadcast."""
        in_shape, out_shape = self.shape(operand), self.shape(output)
        if (
            in_shape is not None
            and out_shape is not None
            and len(in_shape) == len(out_shape)
            and all(a == b for a, b in zip(in_shape, out_shape, strict=True))
        ):
            return grad
        if in_shape is None or out_shape is None:
            raise _Refusal(f"needs the shapes of '{operand}' and '{output}' to undo broadcasting")
        padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
        axes = [i for i, (a, b) in enumerate(zip(padded, out_shape, strict=True)) if a == 1 and b != 1]
        summed = self.op("ReduceSum", [grad, self.ints(axes)], keepdims=1) if axes else grad
        return self.reshape_like(summed, operand)


class _Refusal(Exception):
    """Raised by a rule: this node cannot be differentiated (the message says why)."""


# ------------------------------------------------------------------------------------------------------
# Rules: (emitter, forward node, gradients of its outputs (None = zero), which inputs need one)
#        -> gradients of its inputs (None where not needed)

Rule = Callable[[_Emitter, onnx.NodeProto, list[str | None], list[bool]], list[str | None]]
_RULES: dict[str, Rule] = {}


def _rule(*ops: str):
    def register(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted(_RULES)


def _only_first(node: onnx.NodeProto, need: list[bool], what: str = "its first input") -> None:
    if any(need[1:]):
        raise _Refusal(f"differentiates only {what}; its other inputs depend on the feature")


@_rule("Identity", "Dropout")
def _identity(e, node, dys, need):
    _only_first(node, need)
    return [dys[0]]


@_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(e, node, dys, need):
    _only_first(node, need)
    return [e.reshape_like(dys[0], node.input[0])]


@_rule("Transpose")
def _transpose(e, node, dys, need):
    perm = _attrs(node).get("perm")
    if perm is None:
        return [e.op("Transpose", [dys[0]])]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [e.op("Transpose", [dys[0]], perm=inverse)]


@_rule("Cast")
def _cast(e, node, dys, need):
    """A float-to-float Cast passes the gradient on, cast to float32 (the tail's gradient type)."""
    if int(_attrs(node).get("to", 1)) not in _FLOAT_TYPES:
        raise _Refusal("casts to a non-float type")
    producer = e.net.producer.get(node.input[0])
    if producer is not None and e.net.nodes[producer].op_type in _BOOLEAN_OPS:
        raise _Refusal(f"casts the result of a {e.net.nodes[producer].op_type} (a step: no gradient)")
    return [e.op("Cast", [dys[0]], to=onnx.TensorProto.FLOAT)]


def _reduce_axes(e: _Emitter, node: onnx.NodeProto) -> list[int]:
    """The axes a Reduce* node reduces over (every axis when none are given), non-negative."""
    x = node.input[0]
    rank = len(e.shape(x) or ())
    if not rank:
        raise _Refusal(f"needs the rank of '{x}'")
    axes = _attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = e.net.array(node.input[1])
        if axes is None:
            raise _Refusal("has axes that are not a constant")
    if axes is None or len(axes) == 0:
        if int(_attrs(node).get("noop_with_empty_axes", 0)):
            raise _Refusal("reduces nothing (noop_with_empty_axes)")
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _spread_reduced(e: _Emitter, node: onnx.NodeProto, dy: str, axes: list[int]) -> str:
    """dy (the reduced shape) expanded back over the input's shape."""
    if not int(_attrs(node).get("keepdims", 1)):
        dy = e.op("Unsqueeze", [dy, e.ints(axes)])
    return e.op("Expand", [dy, e.op("Shape", [node.input[0]])])


@_rule("ReduceSum")
def _reduce_sum(e, node, dys, need):
    _only_first(node, need)
    return [_spread_reduced(e, node, dys[0], _reduce_axes(e, node))] + [None] * (len(node.input) - 1)


@_rule("ReduceMean")
def _reduce_mean(e, node, dys, need):
    """Spread back and divided by the count of averaged values (Size(x) / Size(y), at run time)."""
    _only_first(node, need)
    spread = _spread_reduced(e, node, dys[0], _reduce_axes(e, node))
    sizes = [
        e.op("Cast", [e.op("Size", [t])], to=onnx.TensorProto.FLOAT) for t in (node.input[0], node.output[0])
    ]
    return [e.op("Div", [spread, e.op("Div", [sizes[0], sizes[1]])])] + [None] * (len(node.input) - 1)


@_rule("ReduceMax")
def _reduce_max(e, node, dys, need):
    """Every position holding the maximum gets the gradient (as GlobalMaxPool; ties are rare in real data)."""
    _only_first(node, need)
    axes = _reduce_axes(e, node)
    y = node.output[0]
    if not int(_attrs(node).get("keepdims", 1)):
        y = e.op("Unsqueeze", [y, e.ints(axes)])
    hit = e.op("Equal", [node.input[0], y])
    return [e.op("Where", [hit, _spread_reduced(e, node, dys[0], axes), e.zero])] + [None] * (
        len(node.input) - 1
    )


@_rule("ReduceL1")
def _reduce_l1(e, node, dys, need):
    """sign(x) times the spread gradient (Caffe's Reduction ASUM backward)."""
    _only_first(node, need)
    spread = _spread_reduced(e, node, dys[0], _reduce_axes(e, node))
    return [e.op("Mul", [spread, e.op("Sign", [node.input[0]])])] + [None] * (len(node.input) - 1)


@_rule("ReduceSumSquare")
def _reduce_sum_square(e, node, dys, need):
    """2x times the spread gradient (Caffe's Reduction SUMSQ backward)."""
    _only_first(node, need)
    spread = _spread_reduced(e, node, dys[0], _reduce_axes(e, node))
    twice = e.op("Add", [node.input[0], node.input[0]])
    return [e.op("Mul", [spread, twice])] + [None] * (len(node.input) - 1)


@_rule("Tile")
def _tile(e, node, dys, need):
    """The sum over the tiles: dy seen as (r0, d0, r1, d1, ...) summed over the repeat axes."""
    _only_first(node, need, "the tiled input, not the repeats")
    x = node.input[0]
    repeats = e.net.array(node.input[1])
    shape = e.shape(x)
    if repeats is None:
        raise _Refusal("has repeats that are not a constant")
    if shape is None or sum(d is None for d in shape) > 1:
        raise _Refusal(f"needs the shape of '{x}' (at most one axis unknown)")
    split: list[int] = []
    for repeat, size in zip(repeats.tolist(), shape, strict=True):
        split += [int(repeat), -1 if size is None else int(size)]
    grouped = e.op("Reshape", [dys[0], e.ints(split)])
    summed = e.op("ReduceSum", [grouped, e.ints(list(range(0, len(split), 2)))], keepdims=0)
    return [summed, None]


@_rule("Gather")
def _gather(e, node, dys, need):
    """Scatter-add dy back along the gathered axis (constant indices, as Im2col's): a position read by
    several outputs sums their gradients."""
    _only_first(node, need, "its data, not the indices")
    data = node.input[0]
    index = e.net.array(node.input[1])
    if index is None:
        raise _Refusal("has indices that are not a constant")
    shape = e.shape(data)
    axis = int(_attrs(node).get("axis", 0))
    if shape is None or not -len(shape) <= axis < len(shape) or shape[axis % len(shape)] is None:
        raise _Refusal(f"needs the size of the gathered axis of '{data}'")
    rank = len(shape)
    axis %= rank
    flat = np.asarray(index, np.int64).reshape(-1) % int(shape[axis])
    data_shape = e.op("Shape", [data])
    before = e.op("Slice", [data_shape, e.ints([0]), e.ints([axis])])
    after = e.op("Slice", [data_shape, e.ints([axis + 1]), e.ints([rank])])
    grouped = e.op("Reshape", [dys[0], e.op("Concat", [before, e.ints([flat.size]), after], axis=0)])
    positions = e.ints(flat.reshape([1] * axis + [flat.size] + [1] * (rank - axis - 1)).tolist())
    spread = e.op("Expand", [positions, e.op("Shape", [grouped])])
    zeros = e.op("ConstantOfShape", [data_shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    return [e.op("ScatterElements", [zeros, spread, grouped], axis=axis, reduction="add"), None]


@_rule("Clip")
def _clip(e, node, dys, need):
    """The gradient passes where min < x < max, strictly: the converter emits Clip for the forks' ReLU6,
    whose backward is zero at 0 and at the cap (Caffe's Clip layer becomes Min and Max instead)."""
    _only_first(node, need, "its input, not its bounds")
    x = node.input[0]
    inside: str | None = None
    for position, compare in ((1, "Greater"), (2, "Less")):
        if len(node.input) > position and node.input[position]:
            bound = e.op(compare, [x, node.input[position]])
            inside = bound if inside is None else e.op("And", [inside, bound])
    gradient = dys[0] if inside is None else e.op("Where", [inside, dys[0], e.zero])
    return [gradient] + [None] * (len(node.input) - 1)


def _mask(e: _Emitter, x: str) -> str:
    return e.op("Greater", [x, e.zero])


@_rule("Relu")
def _relu(e, node, dys, need):
    return [e.op("Where", [_mask(e, node.input[0]), dys[0], e.zero])]


@_rule("LeakyRelu")
def _leaky_relu(e, node, dys, need):
    alpha = float(_attrs(node).get("alpha", 0.01))
    scaled = e.op("Mul", [dys[0], e.const(np.float32(alpha), "alpha")])
    return [e.op("Where", [_mask(e, node.input[0]), dys[0], scaled])]


@_rule("PRelu")
def _prelu(e, node, dys, need):
    _only_first(node, need, "its input, not the slope")
    scaled = e.op("Mul", [dys[0], node.input[1]])
    return [e.op("Where", [_mask(e, node.input[0]), dys[0], scaled]), None]


@_rule("Elu")
def _elu(e, node, dys, need):
    alpha = float(_attrs(node).get("alpha", 1.0))
    slope = e.op("Add", [node.output[0], e.const(np.float32(alpha), "alpha")])
    return [e.op("Where", [_mask(e, node.input[0]), dys[0], e.op("Mul", [dys[0], slope])])]


@_rule("Sigmoid")
def _sigmoid(e, node, dys, need):
    y = node.output[0]
    one_minus = e.op("Sub", [e.const(np.float32(1), "one"), y])
    return [e.op("Mul", [dys[0], e.op("Mul", [y, one_minus])])]


@_rule("Tanh")
def _tanh(e, node, dys, need):
    y = node.output[0]
    return [e.op("Mul", [dys[0], e.op("Sub", [e.const(np.float32(1), "one"), e.op("Mul", [y, y])])])]


@_rule("Exp")
def _exp(e, node, dys, need):
    return [e.op("Mul", [dys[0], node.output[0]])]


@_rule("Log")
def _log(e, node, dys, need):
    return [e.op("Div", [dys[0], node.input[0]])]


@_rule("Abs")
def _abs(e, node, dys, need):
    return [e.op("Mul", [dys[0], e.op("Sign", [node.input[0]])])]


@_rule("Sqrt")
def _sqrt(e, node, dys, need):
    return [e.op("Div", [dys[0], e.op("Mul", [node.output[0], e.const(np.float32(2), "two")])])]


@_rule("Neg")
def _neg(e, node, dys, need):
    return [e.op("Neg", [dys[0]])]


@_rule("Pow")
def _pow(e, node, dys, need):
    _only_first(node, need, "the base, not the exponent")
    x, exponent = node.input[0], node.input[1]
    lowered = e.op("Sub", [exponent, e.const(np.float32(1), "one")])
    local = e.op("Mul", [exponent, e.op("Pow", [x, lowered])])
    return [e.unbroadcast(e.op("Mul", [dys[0], local]), x, node.output[0]), None]


@_rule("Add", "Sum")
def _add(e, node, dys, need):
    return [
        e.unbroadcast(dys[0], x, node.output[0]) if n else None for x, n in zip(node.input, need, strict=True)
    ]


@_rule("Sub")
def _sub(e, node, dys, need):
    a, b = node.input[0], node.input[1]
    return [
        e.unbroadcast(dys[0], a, node.output[0]) if need[0] else None,
        e.unbroadcast(e.op("Neg", [dys[0]]), b, node.output[0]) if need[1] else None,
    ]


@_rule("Mul")
def _mul(e, node, dys, need):
    a, b = node.input[0], node.input[1]
    return [
        e.unbroadcast(e.op("Mul", [dys[0], b]), a, node.output[0]) if need[0] else None,
        e.unbroadcast(e.op("Mul", [dys[0], a]), b, node.output[0]) if need[1] else None,
    ]


@_rule("Div")
def _div(e, node, dys, need):
    a, b = node.input[0], node.input[1]
    grad_b = None
    if need[1]:  # d(a/b)/db = -y / b
        grad_b = e.op("Neg", [e.op("Div", [e.op("Mul", [dys[0], node.output[0]]), b])])
        grad_b = e.unbroadcast(grad_b, b, node.output[0])
    return [e.unbroadcast(e.op("Div", [dys[0], b]), a, node.output[0]) if need[0] else None, grad_b]


@_rule("Max", "Min")
def _max(e, node, dys, need):
    """The gradient goes to the first input holding the result (Caffe's Eltwise MAX backward; Caffe's Clip,
    converted to Min then Max, passes it where min <= x <= max, as the bound comes second)."""
    y = node.output[0]
    taken: str | None = None
    grads: list[str | None] = []
    for x, n in zip(node.input, need, strict=True):
        hit = e.op("Equal", [x, y])
        first = hit if taken is None else e.op("And", [hit, e.op("Not", [taken])])
        taken = hit if taken is None else e.op("Or", [taken, hit])
        grads.append(e.unbroadcast(e.op("Where", [first, dys[0], e.zero]), x, y) if n else None)
    return grads


@_rule("Gemm")
def _gemm(e, node, dys, need):
    attrs = _attrs(node)
    if need[1:] and any(need[1:]):
        raise _Refusal("has weights that depend on the feature")
    if attrs.get("transA", 0):
        raise _Refusal("transposes its input (transA=1)")
    weights = node.input[1]
    grad = e.op(
        "Gemm",
        [dys[0], weights],
        alpha=float(attrs.get("alpha", 1.0)),
        transB=0 if attrs.get("transB", 0) else 1,
    )
    return [grad] + [None] * (len(node.input) - 1)


@_rule("MatMul")
def _matmul(e, node, dys, need):
    if need[1]:
        raise _Refusal("has a right operand that depends on the feature")
    weights = e.net.array(node.input[1])
    if weights is not None and weights.ndim == 2:
        transposed = e.const(np.ascontiguousarray(weights.T), "weights_t", weights.dtype)
    else:
        rank = len(e.shape(node.input[1]) or ())
        if rank < 2:
            raise _Refusal("multiplies by a right operand of unknown rank")
        transposed = e.op("Transpose", [node.input[1]], perm=[*range(rank - 2), rank - 1, rank - 2])
    return [e.op("MatMul", [dys[0], transposed]), None]


def _softmax_axis(e: _Emitter, node: onnx.NodeProto) -> int:
    axis = int(_attrs(node).get("axis", -1))
    rank = len(e.shape(node.output[0]) or ())
    return axis + rank if axis < 0 and rank else axis


@_rule("Softmax")
def _softmax(e, node, dys, need):
    y = node.output[0]
    total = e.op("ReduceSum", [e.op("Mul", [dys[0], y]), e.ints([_softmax_axis(e, node)])], keepdims=1)
    return [e.op("Mul", [y, e.op("Sub", [dys[0], total])])]


@_rule("LogSoftmax")
def _log_softmax(e, node, dys, need):
    total = e.op("ReduceSum", [dys[0], e.ints([_softmax_axis(e, node)])], keepdims=1)
    return [e.op("Sub", [dys[0], e.op("Mul", [e.op("Exp", [node.output[0]]), total])])]


@_rule("GlobalAveragePool")
def _global_average(e, node, dys, need):
    x = node.input[0]
    rank = len(e.shape(x) or ())
    if rank < 3:
        raise _Refusal(f"input '{x}' has no known spatial axes")
    spread = e.op("Expand", [dys[0], e.op("Shape", [x])])
    shape = e.shape(x)
    if shape is not None and all(d is not None for d in shape[2:]):
        area = int(np.prod(shape[2:]))
        return [e.op("Mul", [spread, e.const(np.float32(1.0 / area), "inverse_area")])]
    # A variable input height/width: the pooled area Size(x) / Size(y), at run time (as ReduceMean's rule).
    sizes = [e.op("Cast", [e.op("Size", [t])], to=onnx.TensorProto.FLOAT) for t in (x, node.output[0])]
    return [e.op("Div", [spread, e.op("Div", [sizes[0], sizes[1]])])]


@_rule("GlobalMaxPool")
def _global_max(e, node, dys, need):
    """The gradient goes to the first maximum of each map in row-major order, as Caffe's max pooling (a
    global one is a kernel over the whole map) keeps the first of tied values (a strict `>` scan)."""
    x = node.input[0]
    flat = e.op("Reshape", [x, e.ints([0, 0, -1])])
    first = e.op("ArgMax", [flat], axis=2, keepdims=1, select_last_index=0)
    area = e.op("Gather", [e.op("Shape", [flat]), e.const(np.int64(2), "axis", np.int64)], axis=0)
    positions = e.op(
        "Range", [e.const(np.int64(0), "start", np.int64), area, e.const(np.int64(1), "step", np.int64)]
    )
    hit = e.op("Equal", [positions, first])
    dy = e.op("Reshape", [dys[0], e.ints([0, 0, 1])])
    return [e.reshape_like(e.op("Where", [hit, dy, e.zero]), x)]


def _check_pool(node: onnx.NodeProto) -> dict:
    attrs = _attrs(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _Refusal("uses auto_pad; only explicit pads are differentiated")
    if any(int(d) != 1 for d in attrs.get("dilations", [])):
        raise _Refusal("uses dilated pooling")
    if int(attrs.get("storage_order", 0)) != 0:
        raise _Refusal("uses column-major storage_order")
    return attrs


@_rule("MaxPool")
def _max_pool(e, node, dys, need):
    """Scatter-add through the pooling indices (the forward copy of the node outputs them)."""
    _check_pool(node)
    x = node.input[0]
    flat_shape = e.op("Reshape", [e.op("Size", [x]), e.ints([1])])
    zeros = e.op("ConstantOfShape", [flat_shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    indices = e.op("Reshape", [node.output[1], e.ints([-1])])
    updates = e.op("Reshape", [dys[0], e.ints([-1])])
    scattered = e.op("ScatterElements", [zeros, indices, updates], axis=0, reduction="add")
    return [e.reshape_like(scattered, x)]


def _window_counts(
    size: int, out: int, kernel: int, stride: int, begin: int, end: int, padded: bool
) -> np.ndarray:
    counts = np.empty(out, dtype=np.float64)
    for o in range(out):
        start = o * stride - begin
        stop = min(start + kernel, size + end)
        if not padded:
            start, stop = max(start, 0), min(stop, size)
        counts[o] = max(stop - start, 1)
    return counts


def _spread(e: _Emitter, grad: str, x: str, y: str, kernel, strides, begin, end, channels: int) -> str:
    """Sum each output's gradient over its window: ConvTranspose with a depthwise kernel of ones."""
    sizes = e.static(x, [2, 3], "the pooled input size")
    outs = e.static(y, [2, 3], "the pooled output size")
    ones = e.const(np.ones((channels, 1, *kernel), np.float32), "window")
    pads_end, output_padding = [], []
    for size, out, k, s, b in zip(sizes, outs, kernel, strides, begin, strict=True):
        crop = s * (out - 1) + k - b - size
        pads_end.append(max(crop, 0))
        output_padding.append(max(-crop, 0))
    return e.op(
        "ConvTranspose",
        [grad, ones],
        kernel_shape=list(kernel),
        strides=list(strides),
        pads=list(begin) + pads_end,
        output_padding=output_padding,
        group=channels,
    )


@_rule("AveragePool")
def _average_pool(e, node, dys, need):
    attrs = _check_pool(node)
    x, y = node.input[0], node.output[0]
    kernel = [int(k) for k in attrs["kernel_shape"]]
    if len(kernel) != 2:
        raise _Refusal("is not a 2-D pooling")
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    begin, end = pads[:2], pads[2:]
    padded = bool(attrs.get("count_include_pad", 0))
    (channels,) = e.static(x, [1], "the channel count")
    sizes = e.static(x, [2, 3], "the pooled input size")
    outs = e.static(y, [2, 3], "the pooled output size")
    counts = [
        _window_counts(size, out, k, s, b, en, padded)
        for size, out, k, s, b, en in zip(sizes, outs, kernel, strides, begin, end, strict=True)
    ]
    inverse = (1.0 / np.outer(counts[0], counts[1])).astype(np.float32)[None, None]
    scaled = e.op("Mul", [dys[0], e.const(inverse, "inverse_counts")])
    return [_spread(e, scaled, x, y, kernel, strides, begin, end, channels)]


@_rule("Pad")
def _pad(e, node, dys, need):
    attrs = _attrs(node)
    mode = attrs.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        raise _Refusal(f"pads in mode {mode!r}; only constant padding is differentiated")
    pads = e.net.array(node.input[1]) if len(node.input) > 1 else None
    if pads is None or (len(node.input) > 3 and node.input[3]):
        raise _Refusal("has pads that are not a constant (or an axes input)")
    pads = [int(p) for p in pads]
    rank = len(pads) // 2
    if min(pads) < 0:
        raise _Refusal("crops (negative pads)")
    big = np.iinfo(np.int64).max
    starts = pads[:rank]
    ends = [-p if p else big for p in pads[rank:]]
    sliced = e.op("Slice", [dys[0], e.ints(starts), e.ints(ends), e.ints(list(range(rank)))])
    return [sliced] + [None] * (len(node.input) - 1)


@_rule("Slice")
def _slice(e, node, dys, need):
    _only_first(node, need)
    x = node.input[0]
    values = [e.net.array(t) if t else None for t in node.input[1:]]
    if (
        values[0] is None
        or values[1] is None
        or any(t and v is None for t, v in zip(node.input[3:], values[2:], strict=False))
    ):
        raise _Refusal("has starts/ends/axes/steps that are not constants")
    shape = e.shape(x)
    if shape is None:
        raise _Refusal(f"needs the shape of '{x}'")
    rank = len(shape)
    starts, ends = [int(v) for v in values[0]], [int(v) for v in values[1]]
    axes = (
        [int(a) % rank for a in values[2]]
        if len(values) > 2 and values[2] is not None
        else list(range(len(starts)))
    )
    steps = [int(s) for s in values[3]] if len(values) > 3 and values[3] is not None else [1] * len(starts)
    if any(s != 1 for s in steps):
        raise _Refusal("uses steps other than 1")
    pads = [0] * (2 * rank)
    for axis, start, stop in zip(axes, starts, ends, strict=True):
        (size,) = e.static(x, [axis], "the sliced axis")
        start = min(max(start + size if start < 0 else start, 0), size)
        stop = min(max(stop + size if stop < 0 else stop, 0), size)
        pads[axis], pads[rank + axis] = start, size - max(stop, start)
    return [e.op("Pad", [dys[0], e.ints(pads)], mode="constant")] + [None] * (len(node.input) - 1)


@_rule("Split")
def _split(e, node, dys, need):
    _only_first(node, need)
    axis = int(_attrs(node).get("axis", 0))
    parts = []
    for out, dy in zip(node.output, dys, strict=True):
        if dy is None:
            zeros = numpy_helper.from_array(np.zeros(1, np.float32))
            dy = e.op("ConstantOfShape", [e.op("Shape", [out])], value=zeros)
        parts.append(dy)
    return [e.op("Concat", parts, axis=axis)] + [None] * (len(node.input) - 1)


@_rule("Concat")
def _concat(e, node, dys, need):
    axis = int(_attrs(node)["axis"])
    rank = len(e.shape(node.output[0]) or ())
    axis = axis + rank if axis < 0 else axis
    sizes = [e.static(x, [axis], "the concatenated axis")[0] for x in node.input]
    parts = e.ops("Split", [dys[0], e.ints(sizes)], len(sizes), axis=axis)
    return [part if n else None for part, n in zip(parts, need, strict=True)]


def _conv_geometry(node: onnx.NodeProto, kernel_rank: int) -> tuple[list[int], list[int], list[int], int]:
    attrs = _attrs(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _Refusal("uses auto_pad; only explicit pads are differentiated")
    strides = [int(s) for s in attrs.get("strides", [1] * kernel_rank)]
    pads = [int(p) for p in attrs.get("pads", [0] * 2 * kernel_rank)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * kernel_rank)]
    return strides, pads, dilations, int(attrs.get("group", 1))


@_rule("Conv")
def _conv(e, node, dys, need):
    if any(need[1:]):
        raise _Refusal("has weights that depend on the feature")
    x, w, y = node.input[0], node.input[1], node.output[0]
    kernel = e.static(w, [2, 3], "the kernel size") if len(e.shape(w) or ()) == 4 else None
    if kernel is None:
        raise _Refusal("is not a 2-D convolution with known weights")
    strides, pads, dilations, group = _conv_geometry(node, 2)
    sizes, outs = e.static(x, [2, 3], "the input size"), e.static(y, [2, 3], "the output size")
    output_padding = [
        size - (s * (out - 1) + d * (k - 1) + 1 - b - en)
        for size, out, s, d, k, b, en in zip(
            sizes, outs, strides, dilations, kernel, pads[:2], pads[2:], strict=True
        )
    ]
    grad = e.op(
        "ConvTranspose",
        [dys[0], w],
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        output_padding=output_padding,
    )
    return [grad] + [None] * (len(node.input) - 1)


@_rule("ConvTranspose")
def _conv_transpose(e, node, dys, need):
    if any(need[1:]):
        raise _Refusal("has weights that depend on the feature")
    attrs = _attrs(node)
    if "output_shape" in attrs:
        raise _Refusal("sets output_shape")
    w = node.input[1]
    if len(e.shape(w) or ()) != 4:
        raise _Refusal("is not a 2-D transposed convolution with known weights")
    strides, pads, dilations, group = _conv_geometry(node, 2)
    grad = e.op("Conv", [dys[0], w], strides=strides, pads=pads, dilations=dilations, group=group)
    return [grad] + [None] * (len(node.input) - 1)


@_rule("BatchNormalization")
def _batch_norm(e, node, dys, need):
    if any(need[1:]) or int(_attrs(node).get("training_mode", 0)):
        raise _Refusal("is not an inference-mode normalisation with constant statistics")
    scale, variance = e.net.array(node.input[1]), e.net.array(node.input[4])
    if scale is None or variance is None:
        raise _Refusal("has statistics that are not constants")
    eps = float(_attrs(node).get("epsilon", 1e-5))
    factor = scale.astype(np.float64) / np.sqrt(variance.astype(np.float64) + eps)
    rank = len(e.shape(node.input[0]) or ()) or 2
    factor = factor.reshape((-1,) + (1,) * (rank - 2)).astype(np.float32)
    return [e.op("Mul", [dys[0], e.const(factor, "bn_factor")])] + [None] * 4


def _channel_window_sum(e: _Emitter, value: str, like: str, size: int, channels: int) -> str:
    """Sum over a window of `size` neighbouring channels (zero beyond the ends), any batch and spatial size."""
    folded = e.op("Reshape", [value, e.ints([0, 1, channels, -1])])
    half = (size - 1) // 2
    ones = e.const(np.ones((1, 1, size, 1), np.float32), "channel_window")
    summed = e.op("Conv", [folded, ones], kernel_shape=[size, 1], pads=[half, 0, size - 1 - half, 0])
    return e.reshape_like(summed, like)


@_rule("LRN")
def _lrn(e, node, dys, need):
    """y = x s^-b with s = k + a/n sum_window x^2: dx = dy s^-b - (2ab/n) x sum_window(dy y / s)."""
    attrs = _attrs(node)
    size, alpha = int(attrs["size"]), float(attrs.get("alpha", 1e-4))
    beta, bias = float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    x, y = node.input[0], node.output[0]
    (channels,) = e.static(x, [1], "the channel count")
    squares = _channel_window_sum(e, e.op("Mul", [x, x]), x, size, channels)
    s = e.op(
        "Add",
        [
            e.op("Mul", [squares, e.const(np.float32(alpha / size), "alpha_n")]),
            e.const(np.float32(bias), "k"),
        ],
    )
    direct = e.op("Mul", [dys[0], e.op("Pow", [s, e.const(np.float32(-beta), "neg_beta")])])
    ratio = e.op("Div", [e.op("Mul", [dys[0], y]), s])
    spread = _channel_window_sum(e, ratio, x, size, channels)
    factor = e.const(np.float32(2.0 * alpha * beta / size), "two_ab_n")
    return [e.op("Sub", [direct, e.op("Mul", [e.op("Mul", [x, spread]), factor])])]


# ------------------------------------------------------------------------------------------------------
# Cutting the tail and assembling the model


def _tail_nodes(net: _Net, feature: str, score: str) -> tuple[list[int], list[str], set[str]]:
    """(indices of tail nodes in graph order, side inputs, tensors that depend on the feature)."""
    live = net.descendants(feature)
    if score not in live:
        raise GradientError(
            f"score tensor '{score}' does not depend on feature '{feature}'; choose a --feature-layer that "
            "comes before the classifier"
        )
    wanted: set[int] = set()
    side: list[str] = []
    frontier, seen = [score], {score}
    while frontier:
        tensor = frontier.pop()
        if tensor == feature or tensor in net.initializers:
            continue
        index = net.producer.get(tensor)
        if index is None or (tensor not in live and not net.is_constant(tensor)):
            if tensor not in side:
                side.append(tensor)
            continue
        wanted.add(index)
        for inp in net.nodes[index].input:
            if inp and inp not in seen:
                seen.add(inp)
                frontier.append(inp)
    return sorted(wanted), side, live


def _value_info(
    name: str, shape: Sequence[int | None] | None, dtype=onnx.TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    if shape is None:
        return helper.make_tensor_value_info(name, dtype, None)
    # A batch the net fixes (torch's dynamo export: 1, its Reshape to (1, C) baked in) stays fixed, so that the
    # tail's session runs several rows (an image's classes) in pieces of that size; any other dim is symbolic.
    dims = [d if d is not None else ("batch" if i == 0 else f"{name}_d{i}") for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, dtype, dims)


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return _MIN_OPSET


def build_tail(model: onnx.ModelProto, feature: str, score: str, gradient: bool = True) -> TailModel:
    """The part of `model` from tensor `feature` to tensor `score` as a model; with `gradient`, it also takes
    `seed` (the score's shape) and returns d(sum(seed * score))/d feature. Raises GradientError naming every
    node after the feature that cannot be differentiated."""
    net = _Net(model)
    opset = _opset(model)
    if opset < _MIN_OPSET:
        raise GradientError(
            f"the model uses ONNX opset {opset}; gradients need opset >= {_MIN_OPSET} (convert it again with "
            "camcaffe convert)"
        )
    if feature not in net.producer and feature not in {i.name for i in model.graph.input}:
        raise GradientError(f"feature tensor '{feature}' is not in the model")
    indices, side, live = _tail_nodes(net, feature, score)
    emitter = _Emitter(net)
    forward: list[onnx.NodeProto] = []
    for index in indices:
        node = net.nodes[index]
        if gradient and node.op_type == "MaxPool" and len(node.output) < 2 and node.input[0] in live:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.output.append(f"{node.output[0]}/indices")
            node = copy
        forward.append(node)
    seed, grad_name = (SEED, GRADIENT) if gradient else (None, None)
    backward: list[onnx.NodeProto] = []
    if gradient:
        _backward(emitter, forward, feature, score, net.descendants(feature, differentiable=True))
        backward = emitter.nodes
    used = {t for node in [*forward, *backward] for t in node.input if t}
    initializers = [net.initializers[name] for name in net.initializers if name in used]
    initializers += emitter.initializers
    feature_shape = net.shapes.get(feature)
    score_shape = net.shapes.get(score)
    inputs = [_value_info(feature, feature_shape)]
    inputs += [_value_info(name, net.shapes.get(name)) for name in side]
    outputs = [_value_info(score, score_shape)]
    if gradient:
        inputs.append(_value_info(SEED, score_shape))
        outputs.append(_value_info(GRADIENT, feature_shape))
    graph = helper.make_graph(
        [*forward, *backward], f"{model.graph.name or 'model'}_tail", inputs, outputs, initializers
    )
    tail = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 17))])
    tail.ir_version = max(model.ir_version, 8)
    return TailModel(
        tail, feature, score, seed, grad_name, side, tuple(score_shape or ()), tuple(feature_shape or ())
    )


def _backward(e: _Emitter, forward: list[onnx.NodeProto], feature: str, score: str, live: set[str]) -> None:
    grads: dict[str, list[str]] = {score: [SEED]}
    refused: list[str] = []

    def total(tensor: str) -> str | None:
        parts = grads.get(tensor)
        if not parts:
            return None
        if len(parts) > 1:
            grads[tensor] = [e.op("Sum", parts)]
        return grads[tensor][0]

    for node in reversed(forward):
        outputs = [o for o in node.output if o]
        dys = [total(o) for o in node.output]
        if all(dy is None for dy in dys[: len(outputs)]):
            continue
        need = [bool(t) and (t == feature or t in live) for t in node.input]
        if not any(need):
            continue
        rule = _RULES.get(node.op_type)
        label = f"'{node.name or node.output[0]}' ({node.op_type})"
        if rule is None:
            refused.append(f"{label}: no backward rule")
            continue
        if node.op_type not in ("Split",) and dys[0] is None:
            continue  # only a secondary output (e.g. MaxPool indices) is used
        try:
            input_grads = rule(e, node, dys, need)
        except _Refusal as why:
            refused.append(f"{label} {why}")
            continue
        for tensor, n, grad in zip(node.input, need, input_grads, strict=False):
            if n and grad is not None:
                grads.setdefault(tensor, []).append(grad)
    if refused:
        raise GradientError(
            f"cannot differentiate the layers after feature '{feature}': {'; '.join(refused)}; name a later "
            "--feature-layer or use a gradient-free --method (cam, scorecam, ablationcam, eigencam)"
        )
    result = total(feature)
    if result is None:
        raise GradientError(f"score '{score}' does not depend on feature '{feature}'")
    e.nodes.append(helper.make_node("Identity", [result], [GRADIENT], name=GRADIENT))


# ------------------------------------------------------------------------------------------------------
# Reverse mode over a chosen part of a graph, with several seeds (pycaffe's layer-by-layer backward)


@dataclass
class ReverseMode:
    """Backward nodes for part of a model: `forward` is the model's node list (MaxPool nodes given their
    indices output where needed), `nodes`/`initializers` the backward part, `gradients` the gradient tensor
    of each wanted tensor a gradient reached, `refused` the nodes with an incoming gradient that have no rule
    (node, why)."""

    forward: list[onnx.NodeProto]
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    gradients: dict[str, str]
    refused: list[tuple[onnx.NodeProto, str]]


def reverse_mode(
    model: onnx.ModelProto,
    seeds: dict[str, Sequence[str]],
    live: set[str],
    propagate: Callable[[onnx.NodeProto], bool],
    wanted: Sequence[str],
    aliases: dict[str, Sequence[str]] | None = None,
) -> ReverseMode:
    """Differentiate the nodes of `model` for which `propagate` holds, from `seeds` (tensor -> names of
    gradient tensors added to it, e.g. graph inputs) back to the `wanted` tensors; gradients go only to
    node inputs in `live`. `aliases[t]`: tensors whose gradients also count as t's (a value t stood for)."""
    pending_aliases = {tensor: list(names) for tensor, names in (aliases or {}).items()}
    net = _Net(model)
    emitter = _Emitter(net)
    forward: list[onnx.NodeProto] = []
    for node in net.nodes:
        if node.op_type == "MaxPool" and len(node.output) < 2 and node.input[0] in live and propagate(node):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.output.append(f"{node.output[0]}/indices")
            node = copy
        forward.append(node)
    grads: dict[str, list[str]] = {tensor: list(names) for tensor, names in seeds.items() if names}
    refused: list[tuple[onnx.NodeProto, str]] = []

    def total(tensor: str) -> str | None:
        parts = list(grads.get(tensor, []))
        for alias in pending_aliases.pop(tensor, []):
            gradient = total(alias)
            if gradient is not None:
                parts.append(gradient)
        if not parts:
            return None
        grads[tensor] = [emitter.op("Sum", parts)] if len(parts) > 1 else parts
        return grads[tensor][0]

    for node in reversed(forward):
        if not propagate(node):
            continue
        dys = [total(o) if o else None for o in node.output]
        if all(dy is None for dy in dys):
            continue
        need = [bool(t) and t in live for t in node.input]
        if not any(need):
            continue
        rule = _RULES.get(node.op_type)
        if rule is None:
            refused.append((node, "no backward rule"))
            continue
        if node.op_type != "Split" and dys[0] is None:
            continue
        try:
            input_grads = rule(emitter, node, dys, need)
        except _Refusal as why:
            refused.append((node, str(why)))
            continue
        for tensor, n, grad in zip(node.input, need, input_grads, strict=False):
            if n and grad is not None:
                grads.setdefault(tensor, []).append(grad)
    gradients = {tensor: name for tensor in wanted if (name := total(tensor)) is not None}
    return ReverseMode(forward, emitter.nodes, emitter.initializers, gradients, refused)


def value_info(name: str, shape: Sequence[int | None] | None) -> onnx.ValueInfoProto:
    """A float tensor's graph input/output entry, the first axis a symbolic batch."""
    return _value_info(name, shape)


def model_opset(model: onnx.ModelProto) -> int:
    return _opset(model)
