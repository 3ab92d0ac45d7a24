"""Class Activation Maps inside the ONNX graph: a classifier gets extra outputs that any onnxruntime (C++,
C#, Java, mobile, web) can read without Python.

Per image, from the CAM head (`cam_head.CamHead`) the model already has:

* ``cam_top_classes`` int64 [N, K] and ``cam_top_probabilities`` float [N, K]: TopK on the probabilities
  (largest first; equal scores: the lower class index first, as `explain.cam.top_k`);
* ``cam_maps`` float [N, K, h, w]: the raw maps of those classes, W[c] . F (`explain.cam.compute_cams`): a
  Gather of the classifier rows and a MatMul over the feature channels; for a class-conv head (SqueezeNet)
  a GatherElements of the class channels;
* ``cam_maps_resized`` float [N, K, H, W] (unless resize is off): bilinear Resize to the net input's H x W,
  then each map min-max normalised to [0, 1] (a constant map becomes zeros) as `explain.cam.normalize`.

With ``class_input``, the int64 input ``cam_class`` [N or 1, M] asks for given classes: outputs
``cam_class_probabilities`` [N, M], ``cam_class_maps`` [N, M, h, w] and ``cam_class_maps_resized``
[N, M, H, W]. It defaults to [[0]] (class 0 for every image) when not fed. The record of all this sits in the
metadata key ``camcaffe.cam_outputs`` (`record_of` reads it back)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from camcaffe.atomic import write_atomic
from camcaffe.errors import CamcaffeError, CamHeadError, InputFileError
from camcaffe.explain.cam_head import CamHead

if TYPE_CHECKING:
    import onnx

METADATA_KEY = "camcaffe.cam_outputs"
FORMAT_VERSION = 1
TOP_CLASSES = "cam_top_classes"
TOP_PROBABILITIES = "cam_top_probabilities"
MAPS = "cam_maps"
MAPS_RESIZED = "cam_maps_resized"
PROBABILITIES = "cam_probabilities"  # only for a model without a Softmax: the softmax of its class scores
CLASS_INPUT = "cam_class"
CLASS_PROBABILITIES = "cam_class_probabilities"
CLASS_MAPS = "cam_class_maps"
CLASS_MAPS_RESIZED = "cam_class_maps_resized"
_INT64 = 7
_FLOAT = 1
_SMALL_BYTES = 4096  # initializers up to this size stay inline in a model with external data
_EXTERNAL_ABOVE = 1_900_000_000  # protobuf messages stop at 2 GiB: weights go to OUT.onnx.data above this


@dataclass(frozen=True)
class CamOutputs:
    """What a `--with-cam` model declares in `camcaffe.cam_outputs`."""

    top_k: int
    kind: str
    num_classes: int
    feature_tensor: str
    probabilities: str  # the tensor TopK reads: the model's probabilities, else the softmax added here
    logits: str | None  # without a Softmax in the model: the class scores that softmax reads
    top_classes: str
    top_probabilities: str
    maps: str
    maps_resized: str | None
    class_input: str | None
    class_probabilities: str | None
    class_maps: str | None
    class_maps_resized: str | None

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, **self.__dict__})


def record_of(metadata: dict[str, str], outputs: set[str], inputs: set[str]) -> CamOutputs | None:
    """The CAM outputs a model's metadata records, when every named output (and the class input) is really in
    the graph; None otherwise (then the model is used as a plain classifier)."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        data = json.loads(text)
        data.pop("version", None)
        record = CamOutputs(**data)
    except (ValueError, TypeError):
        return None
    named = [record.top_classes, record.top_probabilities, record.maps, record.maps_resized]
    if record.class_input is not None:
        named += [record.class_probabilities, record.class_maps, record.class_maps_resized]
        if record.class_input not in inputs:
            return None
    if any(name is not None and name not in outputs for name in named):
        return None
    return record


class _Builder:
    """Nodes and initializers appended under the `cam/` prefix."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: set[str] = set()

    def const(self, name: str, values: np.ndarray) -> str:
        from onnx import numpy_helper

        if f"cam/{name}" not in self._constants:
            self._constants.add(f"cam/{name}")
            self.initializers.append(numpy_helper.from_array(np.asarray(values), f"cam/{name}"))
        return f"cam/{name}"

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        self._count += 1
        out = output or f"cam/{op_type.lower()}_{self._count}"
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=f"cam/{op_type}_{self._count}", **attrs)
        )
        return out

    def dims(self, tensor: str, start: int, end: int) -> str:
        shape = self.op("Shape", [tensor])
        return self.op(
            "Slice",
            [shape, self.const(f"s{start}", np.array([start])), self.const(f"e{end}", np.array([end]))],
        )


def _reuse_or_add(builder: _Builder, model: onnx.ModelProto, head: CamHead) -> str:
    """The (K, C) classifier matrix: the model's own initializer when it holds exactly head.weights, else a copy."""
    from onnx import numpy_helper

    node = next((n for n in model.graph.node if n.name == head.fc_node), None)
    inits = {t.name: t for t in model.graph.initializer}
    if node is not None and len(node.input) > 1 and node.input[1] in inits:
        tensor = inits[node.input[1]]
        if tensor.data_location != 1 and tuple(tensor.dims) == head.weights.shape:
            array = numpy_helper.to_array(tensor)
            if array.dtype == np.float32 and np.array_equal(array, head.weights):
                return tensor.name
    return builder.const("classifier_weights", head.weights.astype(np.float32))


def _probabilities(builder: _Builder, model: onnx.ModelProto, head: CamHead) -> str:
    """[N, K] probabilities: the model's Softmax output, else a softmax of the head's logits (as the pipeline
    computes them without one: the pooled features times the classifier, or the pooled class maps)."""
    if head.prob_output:
        return builder.op("Flatten", [head.prob_output], "cam/probabilities", axis=1)
    if head.logits:
        return builder.op("Softmax", [builder.op("Flatten", [head.logits], axis=1)], PROBABILITIES, axis=1)
    pooled = builder.op("ReduceMean", [head.feature_blob], axes=[2, 3], keepdims=0)
    if head.kind == "class_conv":
        logits = pooled
    else:
        weights = _reuse_or_add(builder, model, head)
        inputs = [pooled, weights] + (
            [builder.const("classifier_bias", head.bias)] if head.bias is not None else []
        )
        logits = builder.op("Gemm", inputs, transB=1)
    return builder.op("Softmax", [logits], PROBABILITIES, axis=1)


def _maps(builder: _Builder, head: CamHead, weights: str | None, classes: str, output: str) -> str:
    """[N, k, h, w] raw maps of the classes [N or 1, k]."""
    feature = head.feature_blob
    if head.kind == "class_conv":
        target = builder.op(
            "Concat",
            [builder.dims(feature, 0, 1), builder.dims(classes, 1, 2), builder.dims(feature, 2, 4)],
            axis=0,
        )
        index = builder.op("Unsqueeze", [classes, builder.const("hw_axes", np.array([2, 3]))])
        return builder.op("GatherElements", [feature, builder.op("Expand", [index, target])], output, axis=1)
    assert weights is not None
    rows = builder.op("Gather", [weights, classes], axis=0)  # [N, k, C]
    flat = builder.op("Reshape", [feature, builder.const("flat_shape", np.array([0, 0, -1]))])  # [N, C, hw]
    product = builder.op("MatMul", [rows, flat])  # [N, k, hw]
    shape = builder.op(
        "Concat", [builder.const("keep2", np.array([0, 0])), builder.dims(feature, 2, 4)], axis=0
    )
    return builder.op("Reshape", [product, shape], output)


def _resized(builder: _Builder, maps: str, image: str, output: str) -> str:
    """Bilinear resize to the image input's H x W, then per-map min-max to [0, 1] (constant map -> 0)."""
    sizes = builder.op("Concat", [builder.dims(maps, 0, 2), builder.dims(image, 2, 4)], axis=0)
    resized = builder.op(
        "Resize", [maps, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    low = builder.op("ReduceMin", [resized], axes=[2, 3], keepdims=1)
    high = builder.op("ReduceMax", [resized], axes=[2, 3], keepdims=1)
    span = builder.op("Sub", [high, low])
    varies = builder.op("Greater", [span, builder.const("zero", np.array(0, np.float32))])
    safe = builder.op("Where", [varies, span, builder.const("one", np.array(1, np.float32))])
    scaled = builder.op("Div", [builder.op("Sub", [resized, low]), safe])
    return builder.op("Where", [varies, scaled, builder.const("zero", np.array(0, np.float32))], output)


def _gathered_probabilities(builder: _Builder, probabilities: str, classes: str, output: str) -> str:
    target = builder.op("Concat", [builder.dims(probabilities, 0, 1), builder.dims(classes, 1, 2)], axis=0)
    return builder.op(
        "GatherElements", [probabilities, builder.op("Expand", [classes, target])], output, axis=1
    )


def _dims_of(model: onnx.ModelProto, name: str) -> list[int | str | None] | None:
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim
            ]
    return None


def image_input(model: onnx.ModelProto) -> str:
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    if not names:
        raise CamcaffeError("the model has no input; export-cam needs the image input of a classifier")
    return names[0]


def add_cam_outputs(
    model: onnx.ModelProto, head: CamHead, top_k: int, class_input: bool = False, resize: bool = True
) -> onnx.ModelProto:
    """A copy of `model` with the CAM outputs of `head` (see the module doc) and their metadata record."""
    import onnx
    from onnx import helper

    if any(p.key == METADATA_KEY for p in model.metadata_props):
        raise CamcaffeError(
            "the model already has CAM outputs (camcaffe.cam_outputs); export from the plain model"
        )
    if not 1 <= top_k <= head.num_classes:
        raise CamcaffeError(
            f"--top-k {top_k} must lie between 1 and the classifier's {head.num_classes} classes"
        )
    taken = {o for n in model.graph.node for o in n.output} | {v.name for v in model.graph.input}
    ours = {TOP_CLASSES, TOP_PROBABILITIES, MAPS, MAPS_RESIZED, PROBABILITIES, CLASS_INPUT, CLASS_MAPS}
    clash = sorted(taken & ours)
    if clash:
        raise CamcaffeError(
            f"the model already has tensors named {', '.join(clash)}; rename them before export-cam"
        )
    image = image_input(model)
    builder = _Builder()
    weights = _reuse_or_add(builder, model, head) if head.kind == "gap_linear" else None
    probabilities = _probabilities(builder, model, head)
    builder.op(
        "TopK", [probabilities, builder.const("k", np.array([top_k]))], None, axis=1, largest=1, sorted=1
    )
    topk = builder.nodes[-1]
    topk.output[:] = [TOP_PROBABILITIES, TOP_CLASSES]
    _maps(builder, head, weights, TOP_CLASSES, MAPS)
    if resize:
        _resized(builder, MAPS, image, MAPS_RESIZED)
    if class_input:
        _gathered_probabilities(builder, probabilities, CLASS_INPUT, CLASS_PROBABILITIES)
        _maps(builder, head, weights, CLASS_INPUT, CLASS_MAPS)
        if resize:
            _resized(builder, CLASS_MAPS, image, CLASS_MAPS_RESIZED)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph.node.extend(builder.nodes)
    graph.initializer.extend(builder.initializers)
    batch = (_dims_of(model, image) or ["batch"])[0] or "batch"
    image_dims = _dims_of(model, image) or [batch, None, None, None]
    feature_dims = _dims_of(model, head.feature_blob) or [batch, None, "cam_h", "cam_w"]
    h, w = feature_dims[2] or "cam_h", feature_dims[3] or "cam_w"
    H, W = image_dims[2] or "input_h", image_dims[3] or "input_w"  # noqa: N806 - the image's height/width

    def declare(name: str, elem: int, dims: list) -> None:
        graph.output.append(helper.make_tensor_value_info(name, elem, dims))

    declare(TOP_CLASSES, _INT64, [batch, top_k])
    declare(TOP_PROBABILITIES, _FLOAT, [batch, top_k])
    declare(MAPS, _FLOAT, [batch, top_k, h, w])
    if resize:
        declare(MAPS_RESIZED, _FLOAT, [batch, top_k, H, W])
    if not head.prob_output:
        declare(PROBABILITIES, _FLOAT, [batch, head.num_classes])
    if class_input:
        graph.input.append(helper.make_tensor_value_info(CLASS_INPUT, _INT64, ["cam_class_n", "cam_class_m"]))
        default = onnx.numpy_helper.from_array(np.zeros((1, 1), np.int64), CLASS_INPUT)
        graph.initializer.append(default)  # an overridable default: the input may be left out
        declare(CLASS_PROBABILITIES, _FLOAT, [batch, "cam_class_m"])
        declare(CLASS_MAPS, _FLOAT, [batch, "cam_class_m", h, w])
        if resize:
            declare(CLASS_MAPS_RESIZED, _FLOAT, [batch, "cam_class_m", H, W])
    record = CamOutputs(
        top_k=top_k,
        kind=head.kind,
        num_classes=head.num_classes,
        feature_tensor=head.feature_blob,
        probabilities=head.prob_output or probabilities,
        logits=None if head.prob_output else head.logits,
        top_classes=TOP_CLASSES,
        top_probabilities=TOP_PROBABILITIES,
        maps=MAPS,
        maps_resized=MAPS_RESIZED if resize else None,
        class_input=CLASS_INPUT if class_input else None,
        class_probabilities=CLASS_PROBABILITIES if class_input else None,
        class_maps=CLASS_MAPS if class_input else None,
        class_maps_resized=CLASS_MAPS_RESIZED if class_input and resize else None,
    )
    entry = out.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, record.to_json()
    return out


def head_of(session, feature_layer: str | None = None, fc_layer: str | None = None) -> CamHead:
    """The CAM head of a model session: the converter's record, else found in the graph; a model without one
    is refused in one line."""
    from camcaffe.explain.cam_head import find_cam_head, head_from_metadata

    head = head_from_metadata(session) if feature_layer is None and fc_layer is None else None
    if head is None:
        try:
            head = find_cam_head(session.model, feature_layer=feature_layer, fc_layer=fc_layer)
        except CamHeadError as exc:
            raise CamHeadError(f"{session.source}: cannot add CAM outputs: {exc}") from None
    return head


def _to_external(model: onnx.ModelProto, location: str, names: set[str]) -> None:
    """Mark the weights for `location`: those that were external, and any large one (not the small shape
    constants, which shape inference must read inline)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    for tensor in model.graph.initializer:
        if tensor.name in names or tensor.ByteSize() > _SMALL_BYTES:
            if not tensor.HasField("raw_data"):
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
            set_external_data(tensor, location)


def export_cam_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    top_k: int,
    class_input: bool = False,
    resize: bool = True,
    feature_layer: str | None = None,
    fc_layer: str | None = None,
) -> CamOutputs:
    """Read an ONNX classifier, add its CAM outputs, write it to `output` atomically; the record written."""
    from camcaffe.runtime.session import ModelSession

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise InputFileError(f"{source}: not found; give the .onnx model to add CAM outputs to")
    if output.is_dir():
        raise InputFileError(f"{output}: is a directory; give the output .onnx file name (-o model_cam.onnx)")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise InputFileError(f"{folder}: output folder does not exist; create it first")
    session = ModelSession(source, provider="cpu")
    if session.info.metadata.get(METADATA_KEY):
        raise CamcaffeError(
            f"{source}: already has CAM outputs (camcaffe.cam_outputs); export from the plain model"
        )
    head = head_of(session, feature_layer, fc_layer)
    external_names = {t.name for t in session.lite.graph.initializer if t.data_location == 1}
    external = bool(external_names)  # weights in MODEL.onnx.data stay in OUT.onnx.data
    model = add_cam_outputs(session.model, head, top_k, class_input=class_input, resize=resize)
    try:
        if external or model.ByteSize() > _EXTERNAL_ABOVE:
            import onnx

            data_name = output.name + ".data"
            (folder / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
            tmp = folder / f".{output.name}.tmp{os.getpid()}"
            try:
                _to_external(model, data_name, external_names)
                onnx.save_model(model, str(tmp))
                for written in (tmp, folder / data_name):
                    if written.exists():
                        os.chmod(written, 0o644)
                os.replace(tmp, output)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            payload = model.SerializeToString()
            write_atomic(output, lambda handle: handle.write(payload), mode="wb")
    except OSError as exc:
        raise InputFileError(
            f"{output}: cannot write the ONNX file ({exc.strerror}); check space and permissions"
        ) from None
    return record_of(
        {METADATA_KEY: model.metadata_props[-1].value},
        {o.name for o in model.graph.output},
        {i.name for i in model.graph.input},
    )
