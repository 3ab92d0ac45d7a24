"""The ONNX model behind `net.backward()`: Caffe's BackwardFromTo over a range of the layer table, as one
graph of the converted net's forward and its reverse-mode nodes (camcaffe.explain.methods.backward rules).

Caffe runs each layer's Backward in turn on shared blob memory; the model reproduces the data flow of that:
every bottom a layer of the range reads becomes a "slot" of its own (an Identity of the tensor, one per
reader, as the Split layers Caffe inserts give each reader its own top and diff), whose gradient is that
layer's bottom diff. A top whose reader is outside the range (or is a layer that does not propagate to that
bottom, or that nothing reads) contributes the diff its blob holds when backward starts, fed as a seed.
The net (net.py) then writes the slots' gradients into the blobs' diffs in Caffe's order, which gives
in-place chains and Split sums Caffe's values, and computes parameter gradients (param_grads.py) from the
bottom values the model also returns.

As in Caffe, nothing is computed unless the prototxt says `force_backward: true` (a deploy net has no loss,
so no layer needs backward). Seeds that are all zero are left out (their gradients are zero), so a layer
without a backward rule is refused (by name) only where a non-zero diff reaches it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from camcaffe.convert.converter import LayerRecord
from camcaffe.errors import CamcaffeError
from camcaffe.explain.cam_head import _known_shapes
from camcaffe.explain.methods.backward import model_opset, reverse_mode, value_info
from camcaffe.pycaffe.splits import LayerEntry

# (layer type, bottom index) that Caffe's Backward never writes a diff for: references read for their shape,
# indices, masks and boxes (their layers write bottom 0 only, or nothing)
NO_PROPAGATION = {
    ("Crop", 1),
    ("Embed", 0),
    ("Interp", 1),
    ("Upsample", 1),
    ("MaxUnPool", 1),
    ("ROIPooling", 1),
    ("PSROIPooling", 1),
    ("BatchReindex", 1),
    ("PriorBox", 0),
    ("PriorBox", 1),
}
_NO_GRADIENT_OPS = {"Shape", "Size"}


class BackwardError(CamcaffeError):
    """A layer in the backward range cannot be differentiated."""


def propagates(entry: LayerEntry, bottom: int) -> bool:
    return (entry.type, bottom) not in NO_PROPAGATION


@dataclass
class BlobVersions:
    """Which write of a blob each layer of the table reads (in-place layers make several per blob), and
    who reads each write: `reader[(writer entry, top index)] = (reader entry, bottom index)` (one reader at
    most once Split layers are in the table)."""

    table: Sequence[LayerEntry]
    # (entry, bottom) -> whether Backward writes that bottom's diff (need_backward.py); None: every one
    flows: Callable[[int, int], bool] | None = None
    reads: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    reader: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        current: dict[str, tuple[int, int]] = {}
        for i, entry in enumerate(self.table):
            for j, blob in enumerate(entry.bottoms):
                version = current.get(blob)
                if version is not None:
                    self.reads[(i, j)] = version
                    self.reader[version] = (i, j)
            for j, blob in enumerate(entry.tops):
                current[blob] = (i, j)

    def passes(self, index: int, bottom: int) -> bool:
        return propagates(self.table[index], bottom) and (self.flows is None or self.flows(index, bottom))

    def tensor_before(self, index: int, blob: str, records: dict[int, LayerRecord]) -> str:
        """The ONNX tensor of the write of `blob` that is current when table entry `index` runs."""
        current: tuple[int, int] | None = None
        for i, entry in enumerate(self.table[:index]):
            if blob in entry.tops:
                current = (i, entry.tops.index(blob))
        if current is None:
            raise CamcaffeError(f"backward: blob '{blob}' is written by no layer before entry {index}")
        while self.table[current[0]].param is None:  # a Split top: its source's write
            current = self.reads[(current[0], 0)]
        return records[current[0]].top_tensors[current[1]]

    def range_seeds(self, first: int, last: int) -> list[str]:
        """Every blob whose stored diff may seed BackwardFromTo(last, first)."""
        found = []
        for i in range(first, last + 1):
            entry = self.table[i]
            if entry.param is None or entry.type == "Input":
                continue
            for j in range(len(entry.tops)):
                found.extend(self.seed_blobs((i, j), last))
        return list(dict.fromkeys(found))

    def seed_blobs(self, version: tuple[int, int], last: int) -> list[str]:
        """The blobs whose stored diffs make up this write's diff when layers up to `last` run backward."""
        reading = self.reader.get(version)
        if reading is None:
            return [self.table[version[0]].tops[version[1]]]
        index, bottom = reading
        entry = self.table[index]
        if index > last or not self.passes(index, bottom):
            return [entry.bottoms[bottom]]
        if entry.param is None:  # an inserted Split inside the range: the sum of its tops' diffs
            return [blob for k in range(len(entry.tops)) for blob in self.seed_blobs((index, k), last)]
        return []


def layer_records(table: Sequence[LayerEntry], records: dict[str, LayerRecord]) -> dict[int, LayerRecord]:
    """Table index -> the converter's record of that layer (the net's layers, in order)."""
    real = [i for i, entry in enumerate(table) if entry.param is not None]
    values = list(records.values())
    if len(real) != len(values):
        raise CamcaffeError("backward: the converted net's layers do not match the layer table")
    return dict(zip(real, values, strict=True))


def _slot_name(entry: int, bottom: int) -> str:
    return f"pycaffe/slot/{entry}/{bottom}"


@dataclass
class BackwardModel:
    """One backward range as a model: net inputs and seeds in; slot gradients and bottom values out."""

    model: onnx.ModelProto
    inputs: list[str]  # net input tensors it reads
    seeds: dict[str, str]  # blob -> seed input
    slot_gradients: dict[tuple[int, int], str]  # (entry, bottom) -> output
    values: dict[tuple[int, int], str]  # (entry, bottom) -> output: the bottom's forward value
    fed: dict[str, str] = field(default_factory=dict)  # tensor taken from blob memory -> its input
    sessions: dict[str, object] = field(default_factory=dict)

    def run(self, provider: str, source: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from camcaffe.runtime.session import ModelSession

        session = self.sessions.get(provider)
        if session is None:
            session = self.sessions[provider] = ModelSession(
                self.model, provider, source=f"backward of {source}"
            )
        names = [*self.slot_gradients.values(), *self.values.values()]
        if not names:
            return {}
        try:
            return session.run(feeds, names)  # type: ignore[attr-defined]
        except CamcaffeError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackwardError(f"{source}: backward failed in ONNX Runtime ({provider}): {detail}") from None


class _SlotChooser:
    """Which bottom a layer's node input stands for. A tensor read through several bottoms (x + x: two
    Split tops in Caffe) maps its uses to those bottoms in order when it is used as many times as it is a
    bottom (Eltwise, Concat), the uses ordered by where they sit in the expression of the tops (the
    converters build it from the bottoms in order: Sum(x, Mul(x, 3)) reads bottom 0, then bottom 1, even
    though the Mul node comes first); otherwise every use reads the first of them."""

    def __init__(self, bottoms: Sequence[str], nodes: dict[int, onnx.NodeProto], tops: Sequence[str]):
        self.first = {tensor: bottoms.index(tensor) for tensor in bottoms}
        uses: dict[str, list[tuple[int, int]]] = {tensor: [] for tensor in bottoms}
        for k in sorted(nodes):
            for position, tensor in enumerate(nodes[k].input):
                if tensor in uses:
                    uses[tensor].append((k, position))
        repeated = len(set(bottoms)) < len(bottoms)
        keys = _expression_keys(nodes, tops) if repeated else {}
        self.chosen: dict[tuple[int, int], int] = {}
        for tensor, found in uses.items():
            readers = [j for j, t in enumerate(bottoms) if t == tensor]
            if len(readers) > 1 and len(found) == len(readers):
                ordered = sorted(found, key=lambda use: (*keys.get(use[0], (len(tops),)), use[1]))
                self.chosen.update(zip(ordered, readers, strict=True))

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.first

    def bottom(self, node: int, position: int, tensor: str) -> int:
        return self.chosen.get((node, position), self.first[tensor])


def _expression_keys(nodes: dict[int, onnx.NodeProto], tops: Sequence[str]) -> dict[int, tuple[int, ...]]:
    """Per node, its place in the expression of the tops: (top index, input position, input position, ...)
    down from the top's node (the smallest such path where the node's output is read more than once)."""
    keys: dict[int, tuple[int, ...]] = {}
    for k in sorted(nodes, reverse=True):
        candidates = [(tops.index(out),) for out in nodes[k].output if out in tops]
        for m, consumer in nodes.items():
            if m in keys:
                candidates.extend(
                    (*keys[m], p) for p, tensor in enumerate(consumer.input) if tensor in nodes[k].output
                )
        if candidates:
            keys[k] = min(candidates)
    return keys


def _layer_nodes(
    nodes: Sequence[onnx.NodeProto], producer: dict[str, int], record: LayerRecord, stops: set[str]
) -> list[int]:
    """Indices of the nodes computing the layer's tops from its bottoms (and constants)."""
    bottoms = set(record.bottom_tensors)
    found: set[int] = set()
    frontier = list(record.top_tensors)
    while frontier:
        tensor = frontier.pop()
        if tensor in bottoms or tensor in stops:
            continue
        index = producer.get(tensor)
        if index is None or index in found:
            continue
        found.add(index)
        frontier.extend(t for t in nodes[index].input if t)
    return sorted(found)


def build_backward(
    model: onnx.ModelProto,
    table: Sequence[LayerEntry],
    records: dict[int, LayerRecord],
    first: int,
    last: int,
    seeded: Callable[[str], bool],
    value_entries: set[int],
    source: str,
    fed: Sequence[str] = (),
    flows: Callable[[int, int], bool] | None = None,
) -> BackwardModel:
    """The model for Caffe's BackwardFromTo(last, first) over the table: seeds for the stored diffs that
    `seeded` accepts (non-zero ones), bottom values for the entries in `value_entries`; the `fed` tensors
    become inputs (values a forward(start=) read from the blobs) instead of being computed."""
    graph = model.graph
    nodes = list(graph.node)
    fed_inputs = {tensor: f"pycaffe/fed/{k}" for k, tensor in enumerate(fed)}

    def renamed(tensor: str) -> str:
        return fed_inputs.get(tensor, tensor)

    producer = {out: k for k, node in enumerate(nodes) for out in node.output if out}
    stops = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    versions = BlobVersions(table, flows)
    # a layer that writes no bottom diff (none propagates, or it does not run backward) is not differentiated
    in_range = [
        i
        for i in range(first, last + 1)
        if table[i].param is not None
        and table[i].type != "Input"
        and any(versions.passes(i, j) for j in range(len(table[i].bottoms)))
    ]
    owner: dict[int, int] = {}  # node index -> table entry
    first_node: dict[int, int] = {}  # node index -> entry whose slots go right before it
    for i in in_range:
        found = _layer_nodes(nodes, producer, records[i], stops)
        for k in found:
            owner[k] = i
        if found:
            first_node[found[0]] = i
    readers = {
        i: _SlotChooser(
            records[i].bottom_tensors,
            {k: nodes[k] for k in owner if owner[k] == i},
            records[i].top_tensors,
        )
        for i in in_range
    }
    # forward nodes with each in-range layer reading its bottoms through slots of its own
    rewired: list[onnx.NodeProto] = []
    slots: dict[tuple[int, int], str] = {}
    for k, node in enumerate(nodes):
        entry = first_node.get(k)
        if entry is not None:
            for j, tensor in enumerate(records[entry].bottom_tensors):
                slots[(entry, j)] = _slot_name(entry, j)
                rewired.append(
                    helper.make_node(
                        "Identity", [renamed(tensor)], [slots[(entry, j)]], name=slots[(entry, j)]
                    )
                )
        if k in owner or any(t in fed_inputs for t in node.input):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for position, tensor in enumerate(copy.input):
                reader = readers[owner[k]] if k in owner else None
                bottom = reader.bottom(k, position, tensor) if reader and tensor in reader else None
                copy.input[position] = _slot_name(owner[k], bottom) if bottom is not None else renamed(tensor)
            node = copy
        rewired.append(node)
    live_slots = {key: name for key, name in slots.items() if versions.passes(*key)}
    live = _descendants(rewired, set(live_slots.values()))
    live |= {records[i].bottom_tensors[j] for i, j in live_slots}
    # a slot reading a value taken from blob memory passes its gradient to the write that value stands for
    aliases: dict[str, list[str]] = {}
    for (i, j), name in live_slots.items():
        tensor = records[i].bottom_tensors[j]
        if tensor in fed_inputs:
            aliases.setdefault(tensor, []).append(name)
    # a slot of a bottom without diff (Crop's reference, propagate_down: false) passes nothing upstream
    differentiated = {node.output[0] for k, node in enumerate(nodes) if k in owner} | set(live_slots.values())

    # seeds: the stored diffs of the tops whose readers do not run
    seed_inputs: dict[str, str] = {}
    seeds: dict[str, list[str]] = {}
    for i in in_range:
        for j, tensor in enumerate(records[i].top_tensors):
            for blob in versions.seed_blobs((i, j), last):
                if blob in seed_inputs or not seeded(blob):
                    continue
                seed_inputs[blob] = f"pycaffe/seed/{blob}"
                seeds.setdefault(tensor, []).append(seed_inputs[blob])

    known = {vi.name: _dims(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    known.update(_known_shapes(model))
    fed_infos = [value_info(name, known.get(tensor)) for tensor, name in fed_inputs.items()]
    forward_model = helper.make_graph(
        rewired, graph.name, [*graph.input, *fed_infos], list(graph.output), list(graph.initializer)
    )
    full = helper.make_model(forward_model, opset_imports=list(model.opset_import))
    full.ir_version = model.ir_version
    result = reverse_mode(
        full,
        seeds,
        live,
        lambda node: node.output[0] in differentiated,
        list(live_slots.values()),
        aliases,
    )
    if result.refused:
        names = {node.output[0]: owner.get(k) for k, node in enumerate(nodes)}
        listed = []
        for node, why in result.refused:
            entry = names.get(node.output[0])
            where = f"layer '{table[entry].name}' ({table[entry].type})" if entry is not None else "a slot"
            listed.append(f"{where}: ONNX node {node.op_type} {why}")
        raise BackwardError(
            f"{source}: backward cannot pass through {'; '.join(dict.fromkeys(listed))}; start the backward "
            "after these layers (start=) or leave their tops' diffs at zero"
        )
    outputs: list[onnx.NodeProto] = []
    slot_gradients: dict[tuple[int, int], str] = {}
    for key, name in live_slots.items():
        gradient = result.gradients.get(name)
        if gradient is not None:
            slot_gradients[key] = f"pycaffe/gradient/{key[0]}/{key[1]}"
            outputs.append(helper.make_node("Identity", [gradient], [slot_gradients[key]]))
    values: dict[tuple[int, int], str] = {}
    for i in sorted(value_entries):
        for j, tensor in enumerate(records[i].bottom_tensors):
            values[(i, j)] = f"pycaffe/value/{i}/{j}"
            outputs.append(helper.make_node("Identity", [renamed(tensor)], [values[(i, j)]]))
    needed = {t for node in [*result.nodes, *outputs] for t in node.input if t}
    forward = _ancestors(result.forward, needed)
    used = {t for node in [*forward, *result.nodes, *outputs] for t in node.input if t}
    net_inputs = [i for i in graph.input if i.name in used]
    inputs = list(net_inputs)
    for tensor, name in fed_inputs.items():
        if name in used:
            inputs.append(value_info(name, known.get(tensor)))
    for tensor, names in seeds.items():
        for name in names:
            inputs.append(value_info(name, known.get(tensor)))
    graph_outputs = [
        helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None) for node in outputs
    ]
    initializers = [t for t in graph.initializer if t.name in used] + result.initializers
    backward_graph = helper.make_graph(
        [*forward, *result.nodes, *outputs], f"{graph.name}_backward", inputs, graph_outputs, initializers
    )
    backward_model = helper.make_model(
        backward_graph, opset_imports=[helper.make_opsetid("", max(model_opset(model), 17))]
    )
    backward_model.ir_version = max(model.ir_version, 8)
    return BackwardModel(
        backward_model,
        [i.name for i in net_inputs],
        seed_inputs,
        slot_gradients,
        values,
        {tensor: name for tensor, name in fed_inputs.items() if name in used},
    )


def _dims(info: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    if not info.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)


def _descendants(nodes: Sequence[onnx.NodeProto], roots: set[str]) -> set[str]:
    """Tensors computed from `roots` through ops that pass a gradient on (nodes in graph order)."""
    seen = set(roots)
    for node in nodes:
        if node.op_type in _NO_GRADIENT_OPS:
            continue
        if any(t in seen for t in node.input if t):
            seen.update(t for t in node.output if t)
    return seen


def _ancestors(nodes: Sequence[onnx.NodeProto], needed: set[str]) -> list[onnx.NodeProto]:
    """The nodes (in order) that compute the `needed` tensors."""
    wanted = set(needed)
    keep = []
    for node in reversed(nodes):
        if any(out in wanted for out in node.output if out):
            keep.append(node)
            wanted.update(t for t in node.input if t)
    return keep[::-1]
