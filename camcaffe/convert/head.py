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
    tensors_at: dict[str, str] = {}  # blob -> tensor current at this point of the walk
    producer: dict[str, object] = {}
    found: dict | None = None
    layer_list = net.layers
    for index, layer in enumerate(layer_list):
        inputs = [tensors_at.get(b, b) for b in layer.bottom]
        if layer.type == "Pooling" and inputs:
            shape = converted.tensor_shapes.get(inputs[0])
            if shape and _covers_map(layer, shape):
                head = _follow_classifier(net, index, converted)
                if head is not None:
                    head.update(
                        feature_blob=layer.bottom[0],
                        feature_tensor=inputs[0],
                        pool_layer=layer.name,
                        feature_shape=shape[1:],
                    )
                    found = head
                else:
                    class_conv = _class_conv_before(layer.bottom[0], producer)
                    if class_conv is not None:
                        found = {
                            "kind": "class_conv",
                            "fc_layer": class_conv.name,
                            "num_classes": int(class_conv.convolution_param.num_output),
                            "feature_blob": layer.bottom[0],
                            "feature_tensor": inputs[0],
                            "pool_layer": layer.name,
                            "feature_shape": shape[1:],
                            "prob_blob": _softmax_after(net, index, layer.top[0]),
                        }
        names = converted.layers.get(layer.name)
        for top in layer.top:
            producer.setdefault(top, [])
            producer[top].append(layer)  # type: ignore[union-attr]
            tensors_at[top] = (
                converted.blob_tensors.get(top, top) if names is None else _tensor_for(converted, layer, top)
            )
    return found


def _tensor_for(converted: ConvertedNet, layer, top: str) -> str:
    final = converted.blob_tensors.get(top)
    candidate = f"{top}@{layer.name}"
    if candidate in converted.tensor_shapes:
        return candidate
    return final or top


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
        if layer.type == "InnerProduct":
            return {
                "kind": "gap_linear",
                "fc_layer": layer.name,
                "num_classes": int(layer.inner_product_param.num_output),
                "weights": f"{layer.name}_W",
                "bias": f"{layer.name}_B" if layer.inner_product_param.bias_term else None,
                "prob_blob": _softmax_after(net, position, layer.top[0]),
            }
        if layer.type == "Convolution" and _is_pointwise(layer):
            return {
                "kind": "gap_linear",
                "fc_layer": layer.name,
                "num_classes": int(layer.convolution_param.num_output),
                "weights": f"{layer.name}_W",
                "bias": f"{layer.name}_B" if layer.convolution_param.bias_term else None,
                "prob_blob": _softmax_after(net, position, layer.top[0]),
            }
        return None
    return None


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
