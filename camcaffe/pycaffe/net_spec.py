"""pycaffe's NetSpec (BVLC python/caffe/net_spec.py): write prototxt from Python.

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 224, 224]))
    n.conv1 = L.Convolution(n.data, num_output=64, kernel_size=3, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    open("deploy.prototxt", "w").write(str(n.to_proto()))

`caffe.layers.<Type>(*bottoms, **params)` makes a layer of that type; keyword arguments go to the layer's
`<type>_param` when it has that field, else to the LayerParameter itself (`name`, `loss_weight`, `include`,
`param=[...]`, any `*_param=dict(...)`); `ntop=` sets the number of tops (0: the layer is returned, several:
a tuple), `in_place=True` writes its bottoms. Names come from the NetSpec attributes; unnamed tops are
`<Type><k>` (k counted per type), and a layer is named after its first top. `caffe.params.<Type>.<ENUM>`
gives enum values (`P.Pooling.MAX`). Messages and fields are camcaffe's schema (caffe.proto.caffe_pb2)."""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from camcaffe.caffe import caffe_pb2
from camcaffe.pycaffe.net import PycaffeError


def param_name_dict() -> dict[str, str]:
    """Layer type -> the prefix of its parameter field, from the `*_param` fields of LayerParameter (their
    message names, less 'Parameter', are the layer types): {'Convolution': 'convolution', ...}."""
    layer = caffe_pb2.LayerParameter()
    names = [f.name for f in layer.DESCRIPTOR.fields if f.name.endswith("_param")]
    types = [getattr(layer, name).DESCRIPTOR.name for name in names]
    return {t.removesuffix("Parameter"): n.removesuffix("_param") for t, n in zip(types, names, strict=True)}


_PARAM_NAMES = param_name_dict()


def assign_proto(proto: Any, name: str, value: Any) -> None:
    """Set field `name` of a message: a dict fills a sub-message, a list (or one value for a repeated field)
    extends a repeated field, a list of dicts adds one sub-message per dict."""
    try:
        field = getattr(proto, name)
    except AttributeError:
        raise PycaffeError(
            f"{proto.DESCRIPTOR.name} has no field '{name}'; check the name against caffe.proto"
        ) from None
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    try:
        if isinstance(value, list):
            if value and isinstance(value[0], dict):
                for item in value:
                    sub = field.add()
                    for key, inner in item.items():
                        assign_proto(sub, key, inner)
            else:
                field.extend(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                assign_proto(field, key, inner)
        else:
            setattr(proto, name, value)
    except (TypeError, ValueError) as exc:
        raise PycaffeError(f"{proto.DESCRIPTOR.name}.{name} = {value!r}: {exc}") from None


class Top:
    """One top (output blob) of a layer function."""

    def __init__(self, fn: Function, n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this top depends on."""
        return to_proto(self)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, bottoms (Tops) and parameters; `tops` are its outputs."""

    def __init__(self, type_name: str, inputs: tuple, params: dict[str, Any]):
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise PycaffeError(
                    f"layers.{type_name}: bottom {index} is a {type(value).__name__}, not a top of another "
                    "layer; pass NetSpec tops (n.data) as positional arguments"
                )
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = int(self.params.pop("ntop", 1))
        self.in_place = bool(self.params.pop("in_place", False))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names: dict, autonames: Counter) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for value in self.inputs:
            value._to_proto(layers, names, autonames)
            bottoms.append(layers[value.fn].top[value.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        prefix = _PARAM_NAMES.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param") or prefix is None:
                assign_proto(layer, key, value)
                continue
            typed = getattr(layer, f"{prefix}_param")
            if key in typed.DESCRIPTOR.fields_by_name:
                assign_proto(typed, key, value)
            else:
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The NetParameter of the given tops and every layer they depend on, auto-named."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (or items) are named after them; `to_proto()` writes every layer."""

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Any:
        return self.__getattr__(item)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops.keys())

    def vals(self) -> list[Any]:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`caffe.layers`: `L.<Type>(*bottoms, **params)` -> a Top, a tuple of Tops (ntop > 1) or the layer
    (ntop=0)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args: Top, **kwargs: Any):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        return layer_fn


class _ParamEnums:
    def __init__(self, message: str):
        self._message = message

    def __getattr__(self, name: str) -> Any:
        cls = getattr(caffe_pb2, self._message, None)
        if cls is None:
            raise AttributeError(f"caffe.proto has no message {self._message}")
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"{self._message} has no value '{name}'") from None


class Parameters:
    """`caffe.params`: `P.<Type>.<ENUM>` is the value of enum ENUM of <Type>Parameter (P.Pooling.MAX)."""

    def __getattr__(self, name: str) -> _ParamEnums:
        if name.startswith("__"):
            raise AttributeError(name)
        return _ParamEnums(name + "Parameter")


layers = Layers()
params = Parameters()

__all__ = ["Function", "Layers", "NetSpec", "Parameters", "Top", "layers", "params", "to_proto"]
