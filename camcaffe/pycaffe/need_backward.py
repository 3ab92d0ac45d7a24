"""Which layers of the table run backward and which bottoms get a diff, as Caffe's Net::Init decides.

Without `force_backward`, a layer needs backward when a bottom needs it or one of its parameters learns
(lr_mult != 0, the default); its tops then need it too. Input blobs need none. Walking back from the tops
that carry a loss weight, only layers under a loss keep running backward, and only their bottoms that
need it get a diff (`propagate_down: false` also keeps one from it). `force_backward` makes every layer
run and every bottom get a diff (net.cpp overrides propagate_down too). A loss-weighted top starts with
the loss weight as its diff (Layer::SetLossWeights): `loss_diffs` lists those blobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from camcaffe.pycaffe.splits import LayerEntry, split_layer_name


@dataclass(frozen=True)
class BackwardNeeds:
    layers: frozenset[int]  # table entries whose Backward runs
    bottoms: frozenset[tuple[int, int]]  # (entry, bottom index) that Backward writes a diff for
    loss_diffs: dict[str, float]  # blob -> the loss weight its diff holds from setup

    @property
    def any(self) -> bool:
        return bool(self.layers)


def loss_weights(table: Sequence[LayerEntry]) -> dict[tuple[int, int], float]:
    """(entry, top index) -> its explicit non-zero loss_weight; a loss top that is also read by layers
    carries it on its Split's first top, as insert_splits.cpp does."""
    split_at = {entry.name: i for i, entry in enumerate(table) if entry.param is None}
    found: dict[tuple[int, int], float] = {}
    for i, entry in enumerate(table):
        if entry.param is None:
            continue
        for j, weight in enumerate(entry.param.loss_weight[: len(entry.tops)]):
            if weight == 0:
                continue
            split = split_at.get(split_layer_name(entry.tops[j], entry.name, j))
            found[(split, 0) if split is not None else (i, j)] = float(weight)
    return found


def _learns(entry: LayerEntry, param_count: int) -> bool:
    specs = entry.param.param if entry.param is not None else []
    return any(k >= len(specs) or specs[k].lr_mult != 0 for k in range(param_count))


def backward_needs(
    table: Sequence[LayerEntry], param_counts: dict[str, int], force_backward: bool
) -> BackwardNeeds:
    weights = loss_weights(table)
    loss_diffs = {table[i].tops[j]: w for (i, j), w in weights.items()}
    real = [i for i, entry in enumerate(table) if entry.type != "Input"]
    if force_backward:
        return BackwardNeeds(
            frozenset(real),
            frozenset((i, j) for i in real for j in range(len(table[i].bottoms))),
            loss_diffs,
        )
    blob_needs: dict[str, bool] = {}
    layer_needs: dict[int, bool] = {}
    bottom_needs: dict[tuple[int, int], bool] = {}
    for i in real:
        entry = table[i]
        needs = _learns(entry, param_counts.get(entry.name, 0)) if entry.param is not None else False
        for j, blob in enumerate(entry.bottoms):
            flows = blob_needs.get(blob, False)
            if entry.param is not None and j < len(entry.param.propagate_down):
                flows = flows and entry.param.propagate_down[j]
            bottom_needs[(i, j)] = flows
            needs = needs or blob_needs.get(blob, False)
        layer_needs[i] = needs
        for blob in entry.tops:
            blob_needs[blob] = blob_needs.get(blob, False) or needs
    under_loss: set[str] = set()
    for i in reversed(real):
        entry = table[i]
        contributes = any((i, j) in weights or top in under_loss for j, top in enumerate(entry.tops))
        if not contributes:
            layer_needs[i] = False
        for j, blob in enumerate(entry.bottoms):
            if contributes:
                under_loss.add(blob)
            else:
                bottom_needs[(i, j)] = False
    layers = frozenset(i for i, needs in layer_needs.items() if needs)
    bottoms = frozenset(key for key, needs in bottom_needs.items() if needs and key[0] in layers)
    return BackwardNeeds(layers, bottoms, loss_diffs)
