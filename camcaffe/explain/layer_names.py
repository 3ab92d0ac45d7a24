"""Framework layer names in exported ONNX graphs: `--feature-layer layer4` (a torch module), `--fc-layer fc`,
`--feature-layer block5_conv3` (a Keras layer, in a tf2onnx export) name the output of that layer.

Exporters leave the layer a node came from in its name or metadata:
  - torch.onnx.export (legacy): node names are scope paths, `/layer4/layer4.1/relu_1/Relu`, `/fc/Gemm`;
  - torch.onnx.export (dynamo): node metadata `pkg.torch.onnx.name_scopes`, e.g. ['', 'layer4', 'layer4.1',
    'layer4.1.relu', 'relu_16'] (the root, the module path, the node);
  - tf2onnx (Keras 3 on TensorFlow): `functional_1/block5_conv3_1/convolution`, `.../Relu`.
A name means a scope: its qualified name (`layer4.1`, `layer4.1.conv1`), its path (`functional_1/block5_conv3`)
or, when neither matches, its last part (`block5_conv3`, `conv1`), else its last part less TensorFlow's
unique-name suffix (`block5_conv3_1`). The layer's output is what leaves the scope:
the value of its last node that a node outside reads (for a Keras Conv2D with an activation, after the
activation, as Keras's layer output is; for torch's `layer4`, its last block's ReLU). Keras 3 on the torch
backend keeps no layer names (its nodes are `/Conv`, `/Relu_1`, `node_Conv_32`): there, name the tensor.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

from camcaffe.errors import CamHeadError

TORCH_SCOPES = "pkg.torch.onnx.name_scopes"
_SEE_ALSO = "`camcaffe inspect` lists the tensor names"


@dataclass(frozen=True)
class Scope:
    qualified: str  # torch's module path with dots: layer4.1.conv1; Keras: functional_1.block5_conv3
    path: str  # the parts joined with '/': layer4/layer4.1/conv1, functional_1/block5_conv3
    last: str  # the innermost part: conv1, block5_conv3


def _parts(node) -> list[str]:
    """The scope parts of a node, outermost first (without the node's own op name)."""
    for prop in node.metadata_props:
        if prop.key == TORCH_SCOPES:
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return [n for n in names[:-1] if n]
            break
    return [part for part in node.name.split("/") if part][:-1]


def node_scopes(node) -> list[Scope]:
    """Every scope a node lies in, outermost first."""
    scopes: list[Scope] = []
    qualified, path = "", ""
    for part in _parts(node):
        # dynamo and the legacy exporter's second level already write `layer4.1`; deeper levels only `conv1`
        qualified = part if not qualified or part.startswith(qualified + ".") else f"{qualified}.{part}"
        path = f"{path}/{part}" if path else part
        scopes.append(Scope(qualified, path, part))
    return scopes


def scope_names(nodes: Sequence) -> list[str]:
    """The qualified names of every scope in the graph (for suggestions)."""
    return sorted({scope.qualified for node in nodes for scope in node_scopes(node)})


def _tensorflow_layer_names(scopes: set[Scope]) -> dict[Scope, str] | None:
    """tf2onnx writes every Keras layer's scope with TensorFlow's unique-name suffix: `conv2d` is `conv2d_1`,
    `conv2d_1` is `conv2d_1_2`, `block5_conv3` is `block5_conv3_1`. When every scope carries one and removing it
    leaves distinct names (per parent), those are the layers' names, and a scope's own name is not: otherwise
    `conv2d_1` would pick Keras's `conv2d`. None for graphs named otherwise (torch's `layer4.1` has none)."""
    names: dict[Scope, str] = {}
    for scope in scopes:
        suffixed = re.fullmatch(r"(.+)_\d+", scope.last)
        if suffixed is None:
            return None
        names[scope] = suffixed.group(1)
    parents = {(scope.path.rpartition("/")[0], name) for scope, name in names.items()}
    return names if len(parents) == len(names) else None


def _matching_scopes(nodes: Sequence, name: str) -> list[Scope]:
    scopes = {scope for node in nodes for scope in node_scopes(node)}
    tensorflow = _tensorflow_layer_names(scopes)
    if tensorflow is not None:
        candidates = (
            {s for s in scopes if name in (s.qualified, s.path)},
            {s for s, layer in tensorflow.items() if layer == name},
        )
    else:
        candidates = (
            {s for s in scopes if name in (s.qualified, s.path)},
            {s for s in scopes if s.last == name},
            # a suffixed scope in a graph not wholly suffixed: Keras's `block5_conv3` as `block5_conv3_1`
            {s for s in scopes if re.fullmatch(re.escape(name) + r"_\d+", s.last)},
        )
    for matches in candidates:
        if matches:
            return sorted(matches, key=lambda s: s.qualified)
    return []


def layer_output(
    nodes: Sequence, graph_outputs: Sequence[str], name: str, what: str, before_softmax: bool = False
) -> str | None:
    """The tensor a framework layer name means (see the module doc), or None when no scope has that name.
    `before_softmax` (a classifier): a layer that ends in a Softmax (Keras's Dense with activation='softmax')
    gives the Softmax's input, the class scores. Raises CamHeadError when the name is ambiguous."""
    matches = _matching_scopes(nodes, name)
    if not matches:
        return None
    if len({s.qualified for s in matches}) > 1:
        listed = ", ".join(s.qualified for s in matches[:6]) + (", ..." if len(matches) > 6 else "")
        raise CamHeadError(
            f"{what} '{name}' names {len(matches)} layers: {listed}; give the full name of one"
        )
    (scope,) = matches[:1]
    members = [
        i for i, node in enumerate(nodes) if any(s.qualified == scope.qualified for s in node_scopes(node))
    ]
    inside = set(members)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    read_outside: set[str] = set(graph_outputs)
    for i, node in enumerate(nodes):
        if i not in inside:
            read_outside.update(t for t in node.input if t)
    exits = [(i, out) for i in members for out in nodes[i].output[:1] if out and out in read_outside]
    if not exits:
        raise CamHeadError(
            f"{what} '{name}' ({scope.qualified}): nothing outside the layer reads its nodes; {_SEE_ALSO}"
        )
    tensor = exits[-1][1]
    for _, other in exits[:-1]:
        if not _feeds(nodes, producer, other, tensor, inside):
            raise CamHeadError(
                f"{what} '{name}' ({scope.qualified}) has several outputs: {other}, {tensor}; name the tensor "
                f"({_SEE_ALSO})"
            )
    if before_softmax:
        tensor = _softmax_input(nodes, producer, tensor)
    return tensor


def _feeds(nodes: Sequence, producer: dict[str, int], source: str, target: str, inside: set[int]) -> bool:
    """Whether `source` is an ancestor of `target` through the layer's own nodes."""
    frontier, seen = [target], {target}
    while frontier:
        index = producer.get(frontier.pop())
        if index is None or index not in inside:
            continue
        for tensor in nodes[index].input:
            if tensor == source:
                return True
            if tensor and tensor not in seen:
                seen.add(tensor)
                frontier.append(tensor)
    return False


def _softmax_input(nodes: Sequence, producer: dict[str, int], tensor: str) -> str:
    """The input of the Softmax that gives `tensor` (through float->float Casts), else `tensor` itself."""
    current = tensor
    while True:
        index = producer.get(current)
        if index is None:
            return tensor
        node = nodes[index]
        if node.op_type == "Softmax":
            return _through_casts(nodes, producer, node.input[0])
        if node.op_type != "Cast":
            return tensor
        current = node.input[0]


def _through_casts(nodes: Sequence, producer: dict[str, int], tensor: str) -> str:
    """`tensor` before the Casts that only copy it (Keras's torch backend wraps every op in them)."""
    while True:
        index = producer.get(tensor)
        if index is None or nodes[index].op_type != "Cast":
            return tensor
        tensor = nodes[index].input[0]
