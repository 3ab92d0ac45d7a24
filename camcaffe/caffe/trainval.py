"""Train/val nets as deploy nets (TEST phase already applied): data layers become inputs, loss and
accuracy layers are dropped, and so are label tops (and layers on labels alone) that only they read."""

from __future__ import annotations

from dataclasses import dataclass, field

from camcaffe.caffe import caffe_pb2

# Layers that read a dataset and produce blobs from it (Python counts only without bottoms).
DATA_LAYER_TYPES = frozenset({
    "Data", "ImageData", "MemoryData", "DenseImageData", "HDF5Data", "DummyData", "WindowData",
    "AnnotatedData", "ImageSegData", "VideoData", "MultiLabelData", "Python",
})  # fmt: skip
# Sinks that compute a training or evaluation value from the net and a label, or write files.
SINK_TYPES = frozenset({"Accuracy", "HDF5Output", "DetectionEvaluate"})


def is_data_layer(layer: caffe_pb2.LayerParameter) -> bool:
    """Known data types, and fork ones (HED's ImageLabelmapData, ...): a '...Data' type without bottoms."""
    if layer.type == "Python" or layer.type.endswith("Data"):
        return not layer.bottom
    return layer.type in DATA_LAYER_TYPES


def is_loss_layer(layer: caffe_pb2.LayerParameter) -> bool:
    return layer.type.endswith("Loss") or layer.type in SINK_TYPES


@dataclass
class TrainingStrip:
    layers: list[caffe_pb2.LayerParameter]
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # data tops whose shape is known
    data_layers: dict[str, str] = field(default_factory=dict)  # layer name -> original type
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (layer name, type)
    dropped_tops: list[str] = field(default_factory=list)
    shape_hints: dict[str, str] = field(default_factory=dict)  # unshaped data top -> N,C,H,W as far as known


def strip_training(layers: list[caffe_pb2.LayerParameter]) -> TrainingStrip:
    if not any(is_data_layer(layer) or is_loss_layer(layer) for layer in layers):
        return TrainingStrip(layers)
    strip = TrainingStrip([])
    kept = []
    for layer in layers:
        if not is_loss_layer(layer):
            kept.append(layer)
    labels, label_only = _label_branches(kept)
    removed: set[int] = set()  # ids: LayerParameters do not hash
    for index, layer in enumerate(kept):
        if index in label_only:
            removed.add(id(layer))
            continue
        if is_data_layer(layer):
            layer = _as_input_layer(layer, labels, strip)
        strip.layers.append(layer)
    strip.dropped = [
        (layer.name, layer.type) for layer in layers if is_loss_layer(layer) or id(layer) in removed
    ]
    return strip


def _label_branches(kept: list[caffe_pb2.LayerParameter]) -> tuple[set[str], set[int]]:
    """Data tops after the first that only the (dropped) losses need, directly or through layers that
    read nothing else (DeepLab's label Interp): those tops, and the indices of those layers. A top that
    the kept net reads (an HHA stream, say) stays an input, with everything derived from it."""
    candidates = {top for layer in kept if is_data_layer(layer) for top in layer.top[1:]}
    while True:
        origins: dict[str, set[str]] = {top: {top} for top in candidates}
        label_only: set[int] = set()
        for index, layer in enumerate(kept):
            if (
                not is_data_layer(layer)
                and layer.bottom
                and all(bottom in origins for bottom in layer.bottom)
            ):
                label_only.add(index)
                sources = set().union(*(origins[bottom] for bottom in layer.bottom))
                for top in layer.top:
                    origins[top] = sources
        needed = {
            source
            for index, layer in enumerate(kept)
            if index not in label_only
            for bottom in layer.bottom
            for source in origins.get(bottom, ())
        }
        if not needed:
            return candidates, label_only
        candidates -= needed


def _as_input_layer(
    layer: caffe_pb2.LayerParameter, dropped_labels: set[str], strip: TrainingStrip
) -> caffe_pb2.LayerParameter:
    shapes = data_top_shapes(layer)
    strip.data_layers[layer.name] = layer.type
    converted = caffe_pb2.LayerParameter(name=layer.name, type="Input")
    for index, top in enumerate(layer.top):
        if index and top in dropped_labels:
            strip.dropped_tops.append(top)
            continue
        converted.top.append(top)
        if shapes[index] is not None:
            strip.input_shapes[top] = shapes[index]
        elif index == 0:
            strip.shape_hints[top] = _partial_shape(layer)
    return converted


def _partial_shape(layer: caffe_pb2.LayerParameter) -> str:
    """'N,C,H,W' with what the layer does fix (batch size, crop size) filled in."""
    batch = next(
        (
            p.batch_size
            for p in (layer.data_param, layer.hdf5_data_param, layer.image_data_param)
            if p.HasField("batch_size")
        ),
        0,
    )
    crop = layer.transform_param.crop_size
    return f"{batch or 'N'},C,{crop or 'H'},{crop or 'W'}"


def data_top_shapes(layer: caffe_pb2.LayerParameter) -> list[list[int] | None]:
    """The shape of each top as the layer's own fields determine it (None where they do not)."""
    count = len(layer.top)
    shapes: list[list[int] | None] = [None] * count
    if layer.type == "DummyData":
        return _dummy_data_shapes(layer.dummy_data_param, count)
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        if min(p.batch_size, p.channels, p.height, p.width) > 0:
            shapes[0] = [p.batch_size, p.channels, p.height, p.width]
            if count > 1:
                shapes[1] = [p.batch_size, 1, 1, 1]
        return shapes
    crop = layer.transform_param.crop_size
    if layer.type in ("ImageData", "ImageSegData"):
        p = layer.image_data_param
        crop = crop or p.crop_size
        height, width = (crop, crop) if crop else (p.new_height, p.new_width)
        if height and width:
            batch = p.batch_size or 1
            shapes[0] = [batch, 3 if p.is_color else 1, height, width]
            if count > 1:
                shapes[1] = [batch] if layer.type == "ImageData" else [batch, 1, height, width]
    elif layer.type == "AnnotatedData":
        # SSD: images resized (WARP to height x width), then cropped; labels vary in length.
        resize = layer.transform_param.resize_param
        warped = resize.resize_mode == resize.WARP and resize.height and resize.width
        height, width = (crop, crop) if crop else (resize.height, resize.width) if warped else (0, 0)
        if height and width:
            shapes[0] = [
                layer.data_param.batch_size or 1,
                1 if layer.transform_param.force_gray else 3,
                height,
                width,
            ]
    elif layer.type == "WindowData":
        p = layer.window_data_param
        crop = crop or p.crop_size
        if crop:
            batch = p.batch_size or 1
            shapes[0] = [batch, 3, crop, crop]
            if count > 1:
                shapes[1] = [batch]
    return shapes


def _dummy_data_shapes(p: caffe_pb2.DummyDataParameter, count: int) -> list[list[int] | None]:
    if p.shape:
        shapes = [list(shape.dim) for shape in p.shape]
    elif p.num:
        legacy = (list(p.num), list(p.channels), list(p.height), list(p.width))
        if any(len(values) != len(legacy[0]) for values in legacy):
            return [None] * count
        shapes = [list(dims) for dims in zip(*legacy, strict=True)]
    else:
        return [None] * count
    if len(shapes) == 1:
        shapes = shapes * count
    return shapes if len(shapes) == count else [None] * count
