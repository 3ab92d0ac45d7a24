"""Caffe's automatically inserted Split layers (insert_splits.cpp), so that pycaffe's layer and blob tables
(`net._layer_names`, `net.layers`, `net._blob_names`, `net.blobs`) list them where Caffe does.

A top read by more than one bottom gets, right after the layer that last wrote it, a layer
`<blob>_<layer>_<top index>_split` of type Split whose tops `<blob>_<layer>_<top index>_split_<k>` feed the
readers in order (k counts the readers). A top with an explicit non-zero `loss_weight` counts as one more
reader and takes `_split_0`. Split
tops share the memory of their bottom in Caffe, so they read as bit-identical aliases of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from camcaffe.caffe import caffe_pb2


@dataclass(frozen=True)
class LayerEntry:
    """One layer of Caffe's runtime layer table: a layer of the net (`param`) or an inserted Split (None)."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: caffe_pb2.LayerParameter | None = None


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, reader: int) -> str:
    return f"{split_layer_name(blob, layer, top_index)}_{reader}"


def _loss_weighted(layer: caffe_pb2.LayerParameter, top_index: int) -> bool:
    """Whether the prototxt gives this top a non-zero loss_weight (implicit loss weights do not count)."""
    return top_index < len(layer.loss_weight) and layer.loss_weight[top_index] != 0


def insert_splits(layers: Sequence[caffe_pb2.LayerParameter]) -> list[LayerEntry]:
    """The layer table Caffe runs for `layers` (in execution order), Split layers inserted."""
    last_writer: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}  # (layer, bottom) -> (layer, top) it reads
    readers: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottom):
            top = last_writer.get(blob)
            if top is None:
                continue  # an unknown bottom: the net loader reports it
            source_of[(i, j)] = top
            readers[top] = readers.get(top, 0) + 1
        for j, blob in enumerate(layer.top):
            last_writer[blob] = (i, j)
            if _loss_weighted(layer, j):
                readers[(i, j)] = readers.get((i, j), 0) + 1

    table: list[LayerEntry] = []
    used: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        bottoms = list(layer.bottom)
        for j, blob in enumerate(bottoms):
            top = source_of.get((i, j))
            if top is not None and readers.get(top, 0) > 1:
                k = used.get(top, 0)
                used[top] = k + 1
                bottoms[j] = split_blob_name(blob, layers[top[0]].name, top[1], k)
        table.append(LayerEntry(layer.name, layer.type, tuple(bottoms), tuple(layer.top), layer))
        for j, blob in enumerate(layer.top):
            count = readers.get((i, j), 0)
            if count > 1:
                if _loss_weighted(layer, j):
                    used[(i, j)] = 1  # the loss takes the first split top
                table.append(
                    LayerEntry(
                        split_layer_name(blob, layer.name, j),
                        "Split",
                        (blob,),
                        tuple(split_blob_name(blob, layer.name, j, k) for k in range(count)),
                    )
                )
    return table


def split_sources(table: Sequence[LayerEntry]) -> dict[str, str]:
    """Each Split top -> the blob it aliases."""
    return {top: entry.bottoms[0] for entry in table if entry.param is None for top in entry.tops}


def blob_order(table: Sequence[LayerEntry]) -> list[str]:
    """Caffe's blob table: every top in order of first appearance."""
    return list(dict.fromkeys(top for entry in table for top in entry.tops))
