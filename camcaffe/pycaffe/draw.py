"""`caffe.draw` (BVLC python/caffe/draw.py): a NetParameter as a pydot graph, or drawn to an image file.

Layers are record nodes labelled `name (Type)` (Pooling with its method; Convolution, Deconvolution and Pooling
with kernel size, stride and pad; learning-rate multipliers with display_lrm), in-place layers green, blobs
octagons; edges out of Data / Convolution / InnerProduct layers carry the batch size or num_output.

It needs the optional pydot package (and Graphviz's `dot` to render images); without pydot each call raises
PycaffeError saying so. `get_pydot_graph(...).to_string()` needs no Graphviz."""

from __future__ import annotations

import os
from typing import Any

from camcaffe.caffe import caffe_pb2
from camcaffe.pycaffe.net import PycaffeError

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_LEARNING = ("Convolution", "Deconvolution", "InnerProduct")
_COLORS = {
    "Convolution": "#FF5050",
    "Deconvolution": "#FF5050",
    "Pooling": "#FF9900",
    "InnerProduct": "#CC33FF",
}


def _pydot() -> Any:
    try:
        import pydotplus as pydot  # noqa: PLC0415 - optional, as pycaffe prefers it
    except ImportError:
        try:
            import pydot  # noqa: PLC0415 - optional dependency
        except ImportError:
            raise PycaffeError(
                "caffe.draw needs pydot (pip install pydot) and Graphviz's dot for images "
                "(Debian: apt-get install graphviz)"
            ) from None
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name."""
    return {v.number: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer: caffe_pb2.LayerParameter) -> str:
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """The weights' and biases' lr_mult of a Convolution / Deconvolution / InnerProduct layer."""
    if layer.type not in _LEARNING:
        raise PycaffeError(f"{layer.type} layers do not have a learning rate multiplier")
    rates = [spec.lr_mult for spec in layer.param]
    if len(rates) > 2:
        raise PycaffeError(f"layer '{layer.name}': could not parse the learning rate multiplier")
    return (*rates, *([1.0] * (2 - len(rates))))  # type: ignore[return-value]


def get_layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool = False) -> str:
    """The node label, quoted; words separated by spaces for vertical layouts, by newlines otherwise."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    kind = (
        f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})"
        if layer.type == "Pooling"
        else f"({layer.type})"
    )
    parts = [layer.name, kind]
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            kernel = c.kernel_size[0] if len(c.kernel_size) else 1
            stride = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in _LEARNING:
        weights, bias = get_layer_lr_mult(layer)
        if weights or bias:
            parts.append(f"lr mult: {weights:.1f}, {bias:.1f}")
    return '"' + separator.join(parts) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    return _COLORS.get(layertype, "#6495ED")


def _included(layer: caffe_pb2.LayerParameter, phase: int | None) -> bool:
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise PycaffeError(f"layer {layer.name} has both include and exclude specified")
    included = not layer.include or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    label_edges: bool = True,
    phase: int | None = None,
    display_lrm: bool = False,
) -> Any:
    """The pydot.Dot graph of the net's layers (only those of `phase` when given)."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if not _included(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = (
            NEURON_LAYER_STYLE
            if in_place
            else {**LAYER_STYLE_DEFAULT, "fillcolor": choose_color_by_layertype(layer.type)}
        )
        nodes[node] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((node, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for value in nodes.values():
        graph.add_node(value)
    for source, target, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[target], label=label))
    return graph


def draw_net(
    caffe_net: caffe_pb2.NetParameter,
    rankdir: str,
    ext: str = "png",
    phase: int | None = None,
    display_lrm: bool = False,
) -> bytes:
    """The net drawn by Graphviz in format `ext` (png, pdf, svg, raw ...)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    try:
        return graph.create(format=ext)
    except Exception as exc:  # noqa: BLE001 - pydot raises plain Exceptions (dot missing, bad format)
        raise PycaffeError(
            f"caffe.draw: Graphviz could not draw the net as '{ext}' ({exc}); install Graphviz's dot "
            "(Debian: apt-get install graphviz) or use get_pydot_graph(...).to_string()"
        ) from None


def draw_net_to_file(
    caffe_net: caffe_pb2.NetParameter,
    filename: str | os.PathLike,
    rankdir: str = "LR",
    phase: int | None = None,
    display_lrm: bool = False,
) -> None:
    """Draw the net into `filename`, in the format its extension names ('.raw': Graphviz's input)."""
    name = os.fspath(filename)
    ext = name[name.rfind(".") + 1 :]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(name, "wb") as handle:
        handle.write(data)
