"""Find the CAM head in a Caffe net: feature map -> global average -> linear classifier, or a
1x1 class convolution before the global average (SqueezeNet)."""

from __future__ import annotations

from camcaffe.caffe.net import CaffeNet
from camcaffe.convert.converter import ConvertedNet

_PASS_THROUGH = {"Flatten", "Reshape", "Dropout", "Split"}


def _covers_map(layer, shape: list[int]) -> bool:
    param = layer.pooling_param
    if param.pool != param.AVE or len(shape) != 4:
        return False
    if param.global_pooling:
        return True
    kernel_h = param.kernel_h if param.HasField("kernel_h") else param.kernel_size
    kernel_w = param.kernel_w if param.HasField("kernel_w") else param.kernel_size
    pad = param.pad or param.pad_h or param.pad_w
    return not pad and kernel_h == shape[2] and kernel_w == shape[3]


def detect_cam_head(net: CaffeNet, converted: ConvertedNet) -> dict | None:
    """Return a JSON-able description of the last CAM-compatible head, or None."""
    producers: dict[str, list] = {}  # blob -> layers that wrote it so far, in order
    found: dict | None = None
    keys = net.layer_keys()  # converted.layers is keyed by these (layer names may repeat)
    for index, layer in enumerate(net.layers):
        record = converted.layers.get(keys[index])
        if layer.type == "Pooling" and record is not None and record.bottom_tensors:
            feature_tensor = record.bottom_tensors[0]  # the value the pooling read (in-place chains included)
            shape = converted.tensor_shapes.get(feature_tensor)
            if shape and _covers_map(layer, shape):
                head = _follow_classifier(net, index, converted)
                if head is None:
                    head = _class_conv_head(layer.bottom[0], producers, net, index, layer.top[0])
                if head is not None:
                    head.update(
                        feature_blob=layer.bottom[0],
                        feature_tensor=feature_tensor,
                        pool_layer=layer.name,
                        feature_shape=shape[1:],
                    )
                    found = head
        for top in layer.top:
            producers.setdefault(top, []).append(layer)
    return found


def _class_conv_head(
    blob: str, producers: dict[str, list], net: CaffeNet, index: int, pooled: str
) -> dict | None:
    class_conv = _class_conv_before(blob, producers)
    if class_conv is None:
        return None
    return {
        "kind": "class_conv",
        "fc_layer": class_conv.name,
        "num_classes": int(class_conv.convolution_param.num_output),
        "prob_blob": _softmax_after(net, index, pooled),
    }


def _consumers(net: CaffeNet, start: int, blob: str):
    for layer in net.layers[start + 1 :]:
        if blob in layer.bottom:
            yield layer


def _follow_classifier(net: CaffeNet, pool_index: int, converted: ConvertedNet) -> dict | None:
    blob = net.layers[pool_index].top[0]
    position = pool_index
    for _ in range(8):
        consumers = list(_consumers(net, position, blob))
        if not consumers:
            return None
        layer = consumers[0]
        position = net.layers.index(layer)
        if layer.type in _PASS_THROUGH:
            blob = layer.top[0]
            continue
        params = _param_names(net, position, converted)
        if layer.type == "InnerProduct":
            return {
                "kind": "gap_linear",
                "fc_layer": layer.name,
                "num_classes": int(layer.inner_product_param.num_output),
                "weights": params[0],
                "bias": params[1] if layer.inner_product_param.bias_term else None,
                "prob_blob": _softmax_after(net, position, layer.top[0]),
            }
        if layer.type == "Convolution" and _is_pointwise(layer):
            return {
                "kind": "gap_linear",
                "fc_layer": layer.name,
                "num_classes": int(layer.convolution_param.num_output),
                "weights": params[0],
                "bias": params[1] if layer.convolution_param.bias_term else None,
                "prob_blob": _softmax_after(net, position, layer.top[0]),
            }
        return None
    return None


def _param_names(net: CaffeNet, position: int, converted: ConvertedNet) -> list[str | None]:
    """The initializers of a layer (`<layer>_W`, `<layer>_B`; a repeated layer name gets `_W_1`...)."""
    name = net.layers[position].name
    record = converted.layers.get(net.layer_keys()[position])
    return list(record.params) + [None, None] if record and record.params else [f"{name}_W", f"{name}_B"]


def _is_pointwise(layer) -> bool:
    param = layer.convolution_param
    kernels = list(param.kernel_size) or [param.kernel_h, param.kernel_w]
    return all(k == 1 for k in kernels) and not list(param.pad) and param.group == 1


def _class_conv_before(blob: str, producer: dict):
    for layer in reversed(producer.get(blob, [])):
        if layer.type in ("ReLU", "Dropout"):
            continue
        if layer.type == "Convolution" and all(
            k == 1 for k in (list(layer.convolution_param.kernel_size) or [layer.convolution_param.kernel_h])
        ):
            return layer
        return None
    return None


def _softmax_after(net: CaffeNet, start: int, blob: str) -> str | None:
    position = start
    for _ in range(4):
        consumers = list(_consumers(net, position, blob))
        if not consumers:
            return None
        layer = consumers[0]
        position = net.layers.index(layer)
        if layer.type == "Softmax":
            return layer.top[0]
        if layer.type in _PASS_THROUGH or layer.type == "Pooling":
            blob = layer.top[0]
            continue
        return None
    return None
