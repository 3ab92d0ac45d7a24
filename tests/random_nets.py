"""Seeded random deploy nets and weights for fuzzing the converter against `caffe_reference`.

`random_net(seed)` builds a small valid net layer by layer: each candidate layer is run through the
reference on scratch values, so a configuration Caffe would reject (a failed CHECK) is never emitted;
the finished net is then run with `random_weights(text, seed)` and `random_input(shape, seed)` and
redrawn when any blob is non-finite or huge, so the tests compare well-conditioned numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
from google.protobuf import text_format

from camcaffe.caffe import caffe_pb2
from tests import caffe_reference as cr

MAX_BLOB_ELEMENTS = 12_000
MAX_FC_INPUT = 3_000
MAX_ABS_VALUE = 1e4
# Split/Flatten/Reshape (and 1-bottom Concat, 1-top Slice) tops share their bottom's memory in Caffe, so an
# in-place layer on one of them changes the others too. CAMCAFFE_FUZZ_ALIASING=0 keeps in-place layers off
# such shared blobs (to look for other bugs while an aliasing bug is open).
ALIASED_IN_PLACE = os.environ.get("CAMCAFFE_FUZZ_ALIASING", "1") != "0"


# ------------------------------------------------------------------------------------------- weights


def _fan_scale(fan_in: int) -> float:
    return 1.0 / math.sqrt(max(fan_in, 1))


def layer_blobs(
    layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray], rng: np.random.Generator
) -> list[np.ndarray]:
    """Random parameter blobs in the shapes Caffe expects for `layer` given its bottoms."""
    t = layer.type

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, shape).astype(np.float32)

    if t == "ConvolutionDepthwise":  # one filter per channel, (C, 1, kh, kw)
        p = layer.convolution_param
        (kh, kw) = cr.conv_geometry(p)["kernel"]
        c = bottoms[0].shape[1]
        blobs = [normal((c, 1, kh, kw), _fan_scale(kh * kw))]
        if p.bias_term:
            blobs.append(uniform((c,), -0.5, 0.5))
        return blobs
    if t in ("Convolution", "Deconvolution", "DepthwiseConvolution"):
        p = layer.convolution_param
        (kh, kw) = cr.conv_geometry(p)["kernel"]
        c = bottoms[0].shape[1]
        if t != "Deconvolution":
            shape = (p.num_output, c // p.group, kh, kw)
            std = _fan_scale(shape[1] * kh * kw)
        else:
            (sh, sw) = cr.conv_geometry(p)["stride"]
            shape = (c, p.num_output // p.group, kh, kw)
            std = _fan_scale(max(1, (c // p.group) * kh * kw // (sh * sw)))
        blobs = [normal(shape, std)]
        if p.bias_term:
            blobs.append(uniform((p.num_output,), -0.5, 0.5))
        return blobs
    if t == "InnerProduct":
        p = layer.inner_product_param
        x = bottoms[0]
        k = cr.count(x.shape, cr.canonical_axis(p.axis, x.ndim))
        shape = (k, p.num_output) if p.transpose else (p.num_output, k)
        blobs = [normal(shape, _fan_scale(k))]
        if p.bias_term:
            blobs.append(uniform((p.num_output,), -0.5, 0.5))
        return blobs
    if t == "PReLU":
        shape = () if layer.prelu_param.channel_shared else (bottoms[0].shape[1],)
        return [uniform(shape, -0.5, 0.8)]
    if t == "BatchNorm":
        c = 1 if bottoms[0].ndim == 1 else bottoms[0].shape[1]
        factor = float(rng.choice([1.0, rng.uniform(0.5, 2.0)]))
        mean = rng.normal(0.0, 0.5, (c,)) * factor
        var = rng.uniform(0.3, 2.0, (c,)) * factor
        return [mean.astype(np.float32), var.astype(np.float32), np.array([factor], np.float32)]
    if t in ("Scale", "Bias"):
        x = bottoms[0]
        p = layer.scale_param if t == "Scale" else layer.bias_param
        shape = tuple(bottoms[1].shape) if len(bottoms) > 1 else cr._param_shape(x, p.axis, p.num_axes)
        blobs = []
        if t == "Scale" and len(bottoms) == 1:
            blobs.append((uniform(shape, 0.5, 1.5) * rng.choice([-1.0, 1.0], shape)).astype(np.float32))
        if t == "Bias" and len(bottoms) == 1:
            blobs.append(uniform(shape, -0.5, 0.5))
        if t == "Scale" and p.bias_term:
            blobs.append(uniform(shape, -0.5, 0.5))
        return blobs
    if t == "BN":  # caffe-segnet (bn_mode given): scale, shift; else slope, bias, mean, variance/inverse std
        c = bottoms[0].shape[1]
        p = layer.bn_param
        if p.HasField("bn_mode"):
            return [uniform((1, c, 1, 1), 0.5, 1.5), uniform((1, c, 1, 1), -0.5, 0.5)]
        shape = (1, c) if p.HasField("engine") else (1, c, 1, 1)  # brocolli-caffe's layout, else PSPNet's
        return [
            uniform(shape, 0.5, 1.5),
            uniform(shape, -0.5, 0.5),
            normal(shape, 0.5),
            uniform(shape, 0.5, 2.0),
        ]
    if t == "Normalize":  # one scale per channel, or one 0-D value when channel_shared
        p = layer.norm_param
        return [uniform(() if p.channel_shared else (bottoms[0].shape[1],), 0.5, 3.0)]
    if t == "Embed":
        p = layer.embed_param
        blobs = [normal((p.input_dim, p.num_output), 1.0)]
        if p.bias_term:
            blobs.append(uniform((p.num_output,), -0.5, 0.5))
        return blobs
    if t == "Parameter" and list(layer.parameter_param.shape.dim)[-1:] == [5]:
        # regions for ROIPooling/PSROIPooling: image 0, corners in image pixels (some half-integral,
        # some outside the map, some inverted)
        count = int(layer.parameter_param.shape.dim[0])
        corners = np.round(rng.uniform(-6, 40, (count, 4)) * 2) / 2
        return [np.concatenate([np.zeros((count, 1)), corners], axis=1).astype(np.float32)]
    return []


def _weights_source(rng: np.random.Generator, store: dict[str, list[np.ndarray]]) -> cr.WeightSource:
    def source(layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray]) -> list[np.ndarray]:
        blobs = layer_blobs(layer, bottoms, rng)
        if blobs:
            store[layer.name] = blobs
        return blobs

    return source


def random_weights(prototxt_text: str, seed: int) -> dict[str, list[np.ndarray]]:
    """Layer name -> parameter blobs (Caffe shapes), drawn in layer order from `seed`."""
    net = cr.parse_net(prototxt_text)
    inputs = {name: np.zeros(shape, np.float32) for name, shape in cr.declared_inputs(net).items()}
    store: dict[str, list[np.ndarray]] = {}
    cr.run_net(net, inputs, _weights_source(np.random.default_rng([seed, 1]), store))
    return store


def random_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 2]).standard_normal(shape).astype(np.float32)


def layer_types(prototxt_text: str) -> list[str]:
    return [layer.type for layer in cr.parse_net(prototxt_text).layer]


def caffemodel_layers(
    prototxt_text: str, weights: dict[str, list[np.ndarray]]
) -> list[tuple[str, str, list[np.ndarray]]]:
    """(name, type, blobs) triples for `write_caffemodel`: every layer in net order, as Caffe's
    Net::ToProto writes them (layers without parameters have no blobs)."""
    net = cr.parse_net(prototxt_text)
    return [(lay.name, lay.type, weights.get(lay.name, [])) for lay in net.layer]


# ------------------------------------------------------------------------------------------- builder


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.scratch = np.random.default_rng(int(rng.integers(2**31)))
        self.layers: list[str] = []
        self.values: dict[str, np.ndarray] = {}
        self.recent: list[str] = []  # blobs, most recently written last
        self.terminal: set[str] = set()
        self.n_layers = 0
        self.n_blobs = 0
        self.fancy_names = bool(rng.random() < 0.3)
        self.buffer: dict[str, int] = {}  # blob -> id of the memory it shares (Caffe's ShareData)

    # -- naming and bookkeeping

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: list):
        return options[int(self.rng.integers(len(options)))]

    def blob_name(self) -> str:
        self.n_blobs += 1
        if self.fancy_names:
            return self.pick(["stage{}/out", "res{}_branch2a", "fc-{}", "blob.{}", "b{}"]).format(
                self.n_blobs
            )
        return f"b{self.n_blobs}"

    def add(
        self, type_: str, bottoms: list[str], tops: list[str] | None = None, params: str = ""
    ) -> list[str]:
        """Append one layer if the reference accepts it; returns its tops ([] when rejected)."""
        tops = tops if tops is not None else [self.blob_name()]
        self.n_layers += 1
        name = f"{type_.lower()}{self.n_layers}"
        if self.fancy_names and self.chance(0.3):
            name = f"block{self.n_layers}/{type_.lower()}"
        body = f'name: "{name}" type: "{type_}" '
        body += "".join(f'bottom: "{b}" ' for b in bottoms) + "".join(f'top: "{t}" ' for t in tops) + params
        layer = text_format.Parse(body, caffe_pb2.LayerParameter())
        in_place = [t for i, t in enumerate(tops) if i < len(bottoms) and bottoms[i] == t]
        for t in in_place:
            if not ALIASED_IN_PLACE and sum(1 for v in self.buffer.values() if v == self.buffer[t]) > 1:
                return []
        bottom_values = [self.values[b] for b in bottoms]
        try:
            if type_ == "Pooling" and cr.pooling_has_empty_window(
                layer.pooling_param, *bottom_values[0].shape[2:]
            ):
                return []
            blobs = layer_blobs(layer, bottom_values, self.scratch)
            outs = cr.run_layer(layer, bottom_values, blobs)
        except (cr.ReferenceError, ValueError, IndexError, ZeroDivisionError):
            return []
        for out in outs:
            if out.size == 0 or out.size > MAX_BLOB_ELEMENTS or out.ndim > 6:
                return []
            if not np.all(np.isfinite(out)) or np.abs(out).max(initial=0) > MAX_ABS_VALUE:
                return []
        self.layers.append("layer { " + body + " }")
        for top in tops:
            if cr.shares_data(layer):
                self.buffer[top] = self.buffer[bottoms[0]]
            elif top not in in_place:
                self.buffer[top] = len(self.layers) * 16 + tops.index(top)
        for top, out in zip(tops, outs, strict=True):
            self.values[top] = out.astype(np.float32)
            if top in self.recent:
                self.recent.remove(top)
            self.recent.append(top)
        return tops

    def blobs_where(self, pred: Callable[[np.ndarray], bool]) -> list[str]:
        return [b for b in self.recent if b not in self.terminal and pred(self.values[b])]

    def choose(self, pred: Callable[[np.ndarray], bool] = lambda v: True) -> str | None:
        options = self.blobs_where(pred)
        if not options:
            return None
        if self.chance(0.55):
            return options[-1]
        return self.pick(options)

    def shape(self, blob: str) -> tuple[int, ...]:
        return tuple(self.values[blob].shape)

    # -- parameter text helpers

    def spatial(self, name: str, h: int, w: int, default: int | None, style: int | None = None) -> str:
        """Emit a conv-style (repeated) spatial field in one of Caffe's spellings."""
        style = int(self.rng.integers(3)) if style is None else style
        if h == w and style == 0:
            return "" if default == h else f"{name}: {h} "
        if style == 1 and name != "dilation":
            return f"{name}_h: {h} {name}_w: {w} "
        if h == w and name != "dilation" and style == 2:
            return f"{name}: {h} "
        return f"{name}: {h} {name}: {w} "

    # -- moves

    def conv(self) -> bool:
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        c = self.shape(x)[1]
        group = 1
        if self.chance(0.3):
            group = self.pick([d for d in range(1, c + 1) if c % d == 0])
        num_output = group * int(self.rng.integers(1, max(2, 12 // group + 1)))
        if self.chance(0.25):
            kh, kw = (int(v) for v in self.rng.integers(1, 6, 2))
        else:
            kh = kw = int(self.pick([1, 1, 2, 3, 3, 5]))
        sh, sw = (int(self.pick([1, 1, 1, 2, 3])),) * 2
        if self.chance(0.2):
            sw = int(self.pick([1, 2]))
        ph, pw = (int(self.pick([0, 0, 1, 2])),) * 2
        if self.chance(0.2):
            pw = int(self.pick([0, 1, 2]))
        dh = dw = 2 if self.chance(0.15) else 1
        if self.chance(0.1):
            dw = 1
        params = f"num_output: {num_output} "
        if kh != kw:
            params += (
                f"kernel_h: {kh} kernel_w: {kw} "
                if self.chance(0.6)
                else f"kernel_size: {kh} kernel_size: {kw} "
            )
        else:
            params += f"kernel_size: {kh} "
        if sh != sw:
            params += f"stride_h: {sh} stride_w: {sw} " if self.chance(0.5) else f"stride: {sh} stride: {sw} "
        elif sh != 1 or self.chance(0.2):
            params += f"stride: {sh} "
        params += self.spatial("pad", ph, pw, 0)
        params += self.spatial("dilation", dh, dw, 1, style=0 if dh == dw else 2)
        if group > 1:
            params += f"group: {group} "
        if self.chance(0.2):
            params += "bias_term: false "
        return bool(self.add("Convolution", [x], params=f"convolution_param {{ {params}}}"))

    def deconv(self) -> bool:
        x = self.choose(lambda v: v.ndim == 4 and v.shape[2] * v.shape[3] <= 100)
        if x is None:
            return False
        c = self.shape(x)[1]
        group = self.pick([d for d in range(1, c + 1) if c % d == 0]) if self.chance(0.3) else 1
        num_output = group * int(self.rng.integers(1, max(2, 8 // group + 1)))
        kh = kw = int(self.pick([1, 2, 3, 4]))
        if self.chance(0.2):
            kw = int(self.pick([1, 2, 3]))
        s = int(self.pick([1, 2, 2, 3]))
        p = int(self.rng.integers(0, max(1, min(kh, kw))))
        params = f"num_output: {num_output} "
        params += f"kernel_size: {kh} " if kh == kw else f"kernel_h: {kh} kernel_w: {kw} "
        params += f"stride: {s} " if s != 1 else ""
        params += f"pad: {p} " if p else ""
        if self.chance(0.15):
            params += "dilation: 2 "
        if group > 1:
            params += f"group: {group} "
        if self.chance(0.3):
            params += "bias_term: false "
        return bool(self.add("Deconvolution", [x], params=f"convolution_param {{ {params}}}"))

    def pool(self, x: str | None = None, params: str | None = None) -> list[str]:
        x = x or self.choose(lambda v: v.ndim == 4)
        if x is None:
            return []
        if params is None:
            method = self.pick(["MAX", "AVE"])
            params = f"pool: {method} "
            if self.chance(0.12):
                params += "global_pooling: true "
            else:
                if self.chance(0.25):
                    kh, kw = (int(v) for v in self.rng.integers(1, 5, 2))
                    params += f"kernel_h: {kh} kernel_w: {kw} "
                else:
                    kh = kw = int(self.pick([1, 2, 2, 3, 3, 4]))
                    params += f"kernel_size: {kh} "
                s = int(self.pick([1, 1, 2, 2, 3]))
                if self.chance(0.2):
                    params += f"stride_h: {s} stride_w: {self.pick([1, 2, 3])} "
                elif s != 1 or self.chance(0.3):
                    params += f"stride: {s} "
                if self.chance(0.5):
                    ph = int(self.rng.integers(0, kh))
                    pw = int(self.rng.integers(0, kw))
                    params += f"pad: {ph} " if ph == pw and self.chance(0.6) else f"pad_h: {ph} pad_w: {pw} "
                if self.chance(0.05):
                    params += "round_mode: FLOOR "
                elif self.chance(0.06):
                    params += "ceil_mode: false "
            if method == "MAX" and self.chance(0.1):  # second top: Caffe's argmax mask
                tops = [self.blob_name(), self.blob_name()]
                return self.add("Pooling", [x], tops, params=f"pooling_param {{ {params}}}")
        return self.add("Pooling", [x], params=f"pooling_param {{ {params}}}")

    def activation(self) -> bool:
        x = self.choose()
        if x is None:
            return False
        nd = self.values[x].ndim
        kinds = ["ReLU", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Threshold", "Dropout"]
        kinds += ["Power", "Exp"]
        kind = self.pick(kinds)
        params = ""
        if kind == "ReLU" and self.chance(0.4):
            params = f"relu_param {{ negative_slope: {self.rng.uniform(0.01, 0.5):.3f} }}"
        elif kind == "PReLU":
            if nd < 2:
                return False
            if self.chance(0.35):
                params = "prelu_param { channel_shared: true }"
        elif kind == "ELU" and self.chance(0.6):
            params = f"elu_param {{ alpha: {self.rng.uniform(0.1, 2.0):.3f} }}"
        elif kind == "Threshold" and self.chance(0.7):
            params = f"threshold_param {{ threshold: {self.rng.uniform(-0.5, 0.5):.3f} }}"
        elif kind == "Dropout":
            ratio = self.rng.uniform(0.1, 0.8)
            params = f"dropout_param {{ dropout_ratio: {ratio:.3f} "
            params += "scale_train: false }" if self.chance(0.5) else "}"
        elif kind == "Power":
            power = self.pick([1.0, 2.0, 2.0, 3.0, 0.0])
            params = (
                f"power_param {{ power: {power} scale: {self.rng.uniform(-1.5, 1.5):.3f} "
                f"shift: {self.rng.uniform(-1, 1):.3f} }}"
            )
        elif kind == "Exp":
            base = self.pick(["", "base: 2.0 ", "base: 0.5 ", "base: 10 "])
            scale, shift = self.rng.uniform(-0.6, 0.6), self.rng.uniform(-1, 1)
            params = f"exp_param {{ {base}scale: {scale:.3f} shift: {shift:.3f} }}"
        inplace = self.chance(0.4) and (x != "data" or self.chance(0.3))
        return bool(self.add(kind, [x], [x] if inplace else None, params))

    def positive_chain(self) -> bool:
        """Sigmoid (strictly positive) followed by Log or a fractional Power."""
        x = self.choose()
        if x is None:
            return False
        inplace = self.chance(0.4) and x != "data"
        tops = self.add("Sigmoid", [x], [x] if inplace else None)
        if not tops:
            return False
        s = tops[0]
        if self.chance(0.5):
            base = self.pick(["", "base: 2.0 ", "base: 10 ", "base: 0.5 "])
            scale, shift = self.rng.uniform(0.5, 2), self.rng.uniform(0, 1)
            params = f"log_param {{ {base}scale: {scale:.3f} shift: {shift:.3f} }}"
            return bool(self.add("Log", [s], [s] if self.chance(0.4) else None, params))
        power = self.pick([0.5, -0.5, 1.5, -1.0])
        params = (
            f"power_param {{ power: {power} scale: {self.rng.uniform(0.5, 2):.3f} "
            f"shift: {self.rng.uniform(0.1, 1):.3f} }}"
        )
        return bool(self.add("Power", [s], [s] if self.chance(0.4) else None, params))

    def bn_chain(self) -> bool:
        x = self.choose(lambda v: 2 <= v.ndim <= 5)
        if x is None:
            return False
        params = ""
        if self.chance(0.3):
            params += f"eps: {self.pick([1e-3, 1e-5, 0.01])} "
        if self.chance(0.3):
            params += "use_global_stats: true "
        inplace = self.chance(0.7)
        tops = self.add(
            "BatchNorm", [x], [x] if inplace else None, f"batch_norm_param {{ {params}}}" if params else ""
        )
        if not tops:
            return False
        y = tops[0]
        if self.chance(0.8):
            sp = "scale_param { bias_term: true }" if self.chance(0.8) else ""
            tops = self.add("Scale", [y], [y] if self.chance(0.7) else None, sp)
            y = tops[0] if tops else y
        if self.chance(0.5):
            self.add("ReLU", [y], [y])
        return True

    def scale_or_bias(self) -> bool:
        x = self.choose()
        if x is None:
            return False
        nd = self.values[x].ndim
        kind = self.pick(["Scale", "Scale", "Bias"])
        axis = int(self.rng.integers(1 if nd > 1 else 0, nd)) if self.chance(0.8) else 0
        num_axes = int(self.pick([1, 1, -1, 0, 2]))
        if num_axes > 0:
            num_axes = min(num_axes, nd - axis)
        params = ""
        if axis != 1:
            params += f"axis: {axis - nd if self.chance(0.3) else axis} "
        if num_axes != 1:
            params += f"num_axes: {num_axes} "
        if kind == "Scale" and self.chance(0.5):
            params += "bias_term: true "
        field = "scale_param" if kind == "Scale" else "bias_param"
        inplace = self.chance(0.5) and x != "data"
        return bool(self.add(kind, [x], [x] if inplace else None, f"{field} {{ {params}}}" if params else ""))

    def lrn(self) -> bool:
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        within = self.chance(0.35)
        size = int(self.pick([3, 5])) if within else int(self.pick([1, 3, 3, 5, 7]))
        alpha, beta = self.rng.uniform(1e-4, 1.0), self.rng.uniform(0.5, 1.0)
        params = f"local_size: {size} alpha: {alpha:.4f} beta: {beta:.3f} "
        if within:
            params += "norm_region: WITHIN_CHANNEL "
        if self.chance(0.5):
            params += f"k: {self.pick([0.5, 1.0, 2.0])} "
        return bool(self.add("LRN", [x], params=f"lrn_param {{ {params}}}"))

    def same_shape_branch(self, x: str) -> str | None:
        """A new blob with x's shape, computed from x."""
        v = self.values[x]
        if v.ndim == 4 and self.chance(0.6):
            c = v.shape[1]
            k = self.pick([1, 3])
            tops = self.add(
                "Convolution",
                [x],
                params=f"convolution_param {{ num_output: {c} kernel_size: {k} pad: {k // 2} }}",
            )
        else:
            tops = self.add(self.pick(["TanH", "Sigmoid", "ReLU", "AbsVal"]), [x])
        return tops[0] if tops else None

    def eltwise(self) -> bool:
        groups: dict[tuple[int, ...], list[str]] = {}
        for b in self.blobs_where(lambda v: True):
            groups.setdefault(self.shape(b), []).append(b)
        multi = [g for g in groups.values() if len(g) >= 2]
        if multi and self.chance(0.5):
            group = self.pick(multi)
            k = min(len(group), int(self.pick([2, 2, 3])))
            bottoms = [str(b) for b in self.rng.choice(group, k, replace=False)]
        else:
            x = self.choose()
            if x is None:
                return False
            bottoms = [x]
            for _ in range(int(self.pick([1, 1, 2]))):
                y = self.same_shape_branch(x)
                if y:
                    bottoms.append(y)
            if len(bottoms) < 2:
                return False
        if self.chance(0.05):
            bottoms.append(bottoms[0])  # the same blob twice
        op = self.pick(["SUM", "SUM", "PROD", "MAX"])
        params = f"operation: {op} " if op != "SUM" or self.chance(0.5) else ""
        if op == "SUM" and self.chance(0.5):
            params += "".join(f"coeff: {self.rng.uniform(-1.5, 1.5):.3f} " for _ in bottoms)
        return bool(self.add("Eltwise", bottoms, params=f"eltwise_param {{ {params}}}" if params else ""))

    def concat(self) -> bool:
        if self.chance(0.5):
            x = self.choose(lambda v: v.ndim == 4)
            if x is None:
                return False
            branches = []
            for _ in range(int(self.pick([2, 2, 3]))):
                kind = self.pick(["c1", "c3", "c5", "pmax", "pave"])
                if kind.startswith("c"):
                    k = int(kind[1])
                    n = int(self.rng.integers(1, 6))
                    tops = self.add(
                        "Convolution",
                        [x],
                        params=f"convolution_param {{ num_output: {n} kernel_size: {k} pad: {k // 2} }}",
                    )
                else:
                    tops = self.pool(
                        x, f"pool: {'MAX' if kind == 'pmax' else 'AVE'} kernel_size: 3 stride: 1 pad: 1 "
                    )
                if tops:
                    branches.append(tops[0])
            if len(branches) < 2:
                return False
            params = "" if self.chance(0.5) else "concat_param { axis: 1 }"
            if self.chance(0.15):
                params = "concat_param { concat_dim: 1 }"
            return bool(self.add("Concat", branches, params=params))
        blobs = self.blobs_where(lambda v: v.ndim >= 1)
        if not blobs:
            return False
        first = self.pick(blobs)
        v = self.values[first]
        axis = int(self.rng.integers(v.ndim))
        key = v.shape[:axis] + v.shape[axis + 1 :]
        mates = [
            b
            for b in blobs
            if self.values[b].ndim == v.ndim
            and self.values[b].shape[:axis] + self.values[b].shape[axis + 1 :] == key
        ]
        k = int(self.pick([2, 2, 3]))
        bottoms = [first] + [str(b) for b in self.rng.choice(mates, min(k - 1, len(mates)), replace=True)]
        if len(bottoms) < 2:
            return False
        spelled = axis - v.ndim if self.chance(0.3) else axis
        params = f"concat_param {{ axis: {spelled} }}" if axis != 1 or self.chance(0.3) else ""
        return bool(self.add("Concat", bottoms, params=params))

    def slice(self) -> bool:
        x = self.choose(lambda v: max(v.shape) >= 2)
        if x is None:
            return False
        shape = self.shape(x)
        axes = [a for a, d in enumerate(shape) if d >= 2]
        axis = int(self.pick(axes)) if not (1 in axes and self.chance(0.5)) else 1
        dim = shape[axis]
        ntop = int(self.rng.integers(2, min(4, dim) + 1))
        params = ""
        if self.chance(0.5) or dim % ntop:
            points = sorted(int(p) for p in self.rng.choice(np.arange(1, dim), ntop - 1, replace=False))
            params += "".join(f"slice_point: {p} " for p in points)
        if axis != 1 or self.chance(0.3):
            if self.chance(0.2):
                params += f"slice_dim: {axis} "
            else:
                params += f"axis: {axis - len(shape) if self.chance(0.3) else axis} "
        tops = [self.blob_name() for _ in range(ntop)]
        return bool(self.add("Slice", [x], tops, f"slice_param {{ {params}}}" if params else ""))

    def split(self) -> bool:
        """Explicit Split, or a one-bottom Concat / one-top Slice: tops that share the bottom's memory."""
        x = self.choose()
        if x is None:
            return False
        kind = self.pick(["Split", "Split", "Concat", "Slice"])
        if kind == "Split":
            return bool(self.add("Split", [x], [self.blob_name() for _ in range(int(self.pick([2, 3])))]))
        return bool(self.add(kind, [x]))

    def flatten(self) -> bool:
        x = self.choose(lambda v: v.ndim >= 2)
        if x is None:
            return False
        nd = self.values[x].ndim
        axis = int(self.rng.integers(nd))
        end = int(self.rng.integers(axis, nd))
        params = ""
        if axis != 1:
            params += f"axis: {axis} "
        if end != nd - 1 or self.chance(0.2):
            params += f"end_axis: {end - nd if self.chance(0.5) else end} "
        return bool(self.add("Flatten", [x], params=f"flatten_param {{ {params}}}" if params else ""))

    def reshape(self) -> bool:
        x = self.choose()
        if x is None:
            return False
        shape = self.shape(x)
        nd = len(shape)
        start = int(self.rng.integers(0, nd + 1)) if self.chance(0.4) else 0
        num_axes = -1 if self.chance(0.6) else int(self.rng.integers(0, nd - start + 1))
        end = nd if num_axes == -1 else start + num_axes
        total = cr.count(shape, start, end)
        dims: list[int] = []
        remaining = total
        for _ in range(int(self.rng.integers(1, 4)) - 1):
            divisors = [d for d in range(1, remaining + 1) if remaining % d == 0]
            d = int(self.pick(divisors))
            dims.append(d)
            remaining //= d
        dims.append(remaining)
        if start + len(dims) + (nd - end) > 6:
            return False
        spelled = list(dims)
        if self.chance(0.6):
            spelled[int(self.rng.integers(len(dims)))] = -1
        for i, d in enumerate(dims):
            if spelled[i] != -1 and start + i < nd and shape[start + i] == d and self.chance(0.5):
                spelled[i] = 0
        params = "shape { " + "".join(f"dim: {d} " for d in spelled) + "} "
        if start != 0:
            params += f"axis: {start - nd - 1 if self.chance(0.3) else start} "
        if num_axes != -1:
            params += f"num_axes: {num_axes} "
        return bool(self.add("Reshape", [x], params=f"reshape_param {{ {params}}}"))

    def softmax(self) -> bool:
        x = self.choose()
        if x is None:
            return False
        nd = self.values[x].ndim
        axis = int(self.rng.integers(nd)) if self.chance(0.6) else min(1, nd - 1)
        params = f"softmax_param {{ axis: {axis - nd if self.chance(0.3) else axis} }}" if axis != 1 else ""
        return bool(self.add("Softmax", [x], params=params))

    def crop(self) -> bool:
        x = self.choose(lambda v: v.ndim == 4 and min(v.shape[2:]) >= 3)
        if x is None:
            return False
        candidates = [
            b
            for b in self.blobs_where(lambda v: v.ndim == 4)
            if b != x and all(a >= c for a, c in zip(self.shape(x)[2:], self.shape(b)[2:], strict=True))
        ]
        if candidates and self.chance(0.5):
            ref = self.pick(candidates)
        else:
            params = f"pool: MAX kernel_size: {self.pick([2, 3])} stride: {self.pick([1, 2])}"
            tops = self.pool(x, params)
            if not tops:
                return False
            ref = tops[0]
        xs, rs = self.shape(x), self.shape(ref)
        axes = [a for a in (1, 2, 3) if all(xs[i] >= rs[i] for i in range(a, 4))]
        if not axes:
            return False
        axis = int(self.pick(axes))
        slack = [xs[i] - rs[i] for i in range(axis, 4)]
        if self.chance(0.5):
            offsets = [int(self.rng.integers(0, s + 1)) for s in slack]
        else:
            offsets = [int(self.rng.integers(0, min(slack) + 1))]
        params = "" if axis == 2 and self.chance(0.5) else f"axis: {axis} "
        params += "".join(f"offset: {o} " for o in offsets) if (any(offsets) or self.chance(0.5)) else ""
        return bool(self.add("Crop", [x, ref], params=f"crop_param {{ {params}}}" if params else ""))

    def argmax(self) -> bool:
        x = self.choose(lambda v: v.ndim >= 2)
        if x is None:
            return False
        if self.chance(0.4):  # 0/1 values: many ties, where Caffe ranks the larger index first
            tops = self.add(
                "Threshold", [x], params=f"threshold_param {{ threshold: {self.rng.uniform(-0.3, 0.3):.3f} }}"
            )
            if not tops:
                return False
            x = tops[0]
        v = self.values[x]
        params = ""
        if self.chance(0.5):
            axis = int(self.rng.integers(v.ndim))
            params += f"axis: {axis - v.ndim if self.chance(0.2) else axis} "
            dim = v.shape[axis]
        else:
            dim = v[0].size
        top_k = int(self.rng.integers(1, min(3, dim) + 1))
        if top_k != 1 or self.chance(0.2):
            params += f"top_k: {top_k} "
        if self.chance(0.4):
            params += "out_max_val: true "
        tops = self.add("ArgMax", [x], params=f"argmax_param {{ {params}}}" if params else "")
        self.terminal.update(tops)
        return bool(tops)

    def inner_product(self) -> bool:
        x = self.choose(lambda v: v.ndim >= 2 and v[0].size <= MAX_FC_INPUT)
        if x is None:
            return False
        nd = self.values[x].ndim
        axis = 1 if self.chance(0.7) else int(self.rng.integers(0, nd))
        params = f"num_output: {int(self.rng.integers(1, 17))} "
        if axis != 1:
            params += f"axis: {axis - nd if self.chance(0.3) else axis} "
        if self.chance(0.3):
            params += "transpose: true "
        if self.chance(0.2):
            params += "bias_term: false "
        return bool(self.add("InnerProduct", [x], params=f"inner_product_param {{ {params}}}"))

    def two_bottom_scale(self) -> bool:
        """Squeeze-and-excitation style: Scale/Bias (x, s) with s (N, C) from global pooling, axis 0."""
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        if self.chance(0.3):
            y = self.same_shape_branch(x)
            if not y:
                return False
            kind = self.pick(["Scale", "Bias"])
            return bool(self.add(kind, [x, y], params=f"{kind.lower()}_param {{ axis: 0 }}"))
        tops = self.pool(x, "pool: AVE global_pooling: true")
        if not tops:
            return False
        g = tops[0]
        if self.chance(0.7):
            self.add("Sigmoid", [g], [g])
        if self.chance(0.5):
            s = self.add("Flatten", [g])
        else:
            s = self.add("Reshape", [g], params="reshape_param { shape { dim: 0 dim: -1 } }")
        if not s:
            return False
        kind = self.pick(["Scale", "Scale", "Bias"])
        inplace = self.chance(0.4) and x != "data"
        return bool(
            self.add(kind, [x, s[0]], [x] if inplace else None, f"{kind.lower()}_param {{ axis: 0 }}")
        )

    def fork_activation(self) -> bool:
        x = self.choose()
        if x is None:
            return False
        kind = self.pick(["ReLU6", "HardSwish", "HardSigmoid", "Clip", "Swish", "Mish"])
        params = ""
        if kind == "ReLU6" and self.chance(0.5):
            params = (
                f"relu6_param {{ negative_slope: {self.pick([0.0, 0.1, 0.3])} "
                f"threshold: {self.pick([0.5, 1.0, 4.0, 6.0])} }}"
            )
        elif kind == "HardSigmoid" and self.chance(0.6):
            params = (
                f"hardsigmoid_param {{ alpha: {self.rng.uniform(0.1, 0.5):.3f} "
                f"beta: {self.rng.uniform(0.2, 0.7):.3f} }}"
            )
        elif kind == "Clip":
            low = self.rng.uniform(-1.5, 0.5)
            params = f"clip_param {{ min: {low:.3f} max: {low + self.rng.uniform(0.0, 2.0):.3f} }}"
        elif kind == "Swish" and self.chance(0.6):
            params = f"swish_param {{ beta: {self.rng.uniform(0.3, 2.0):.3f} }}"
        inplace = self.chance(0.4) and (x != "data" or self.chance(0.3))
        return bool(self.add(kind, [x], [x] if inplace else None, params))

    def reduction(self) -> bool:
        x = self.choose(lambda v: v.ndim >= 1)
        if x is None:
            return False
        nd = self.values[x].ndim
        axis = int(self.rng.integers(0, nd)) if self.chance(0.8) else nd - 1
        op = self.pick(["SUM", "ASUM", "SUMSQ", "MEAN"])
        params = f"operation: {op} " if op != "SUM" or self.chance(0.3) else ""
        if axis != 0 or self.chance(0.3):
            params += f"axis: {axis - nd if self.chance(0.3) else axis} "
        if self.chance(0.4):
            params += f"coeff: {self.rng.uniform(-2.0, 2.0):.3f} "
        tops = self.add("Reduction", [x], params=f"reduction_param {{ {params}}}" if params else "")
        if tops and axis == 0:
            self.terminal.update(tops)  # a 0-axis blob: most moves have nothing to work on
        return bool(tops)

    def tile(self) -> bool:
        x = self.choose(lambda v: v.size <= MAX_BLOB_ELEMENTS // 3)
        if x is None:
            return False
        nd = self.values[x].ndim
        axis = int(self.rng.integers(0, nd))
        params = f"tiles: {self.pick([1, 2, 2, 3])} "
        if axis != 1 or self.chance(0.3):
            params += f"axis: {axis - nd if self.chance(0.3) else axis} "
        return bool(self.add("Tile", [x], params=f"tile_param {{ {params}}}"))

    def mvn(self) -> bool:
        x = self.choose(lambda v: 1 <= v.ndim <= 4)
        if x is None:
            return False
        params = ""
        if self.chance(0.3):
            params += "normalize_variance: false "
        if self.chance(0.4):
            params += "across_channels: true "
        if self.chance(0.4):
            params += f"eps: {self.pick([1e-5, 0.01, 0.5])} "
        inplace = self.values[x].ndim == 4 and self.chance(0.3) and x != "data"
        return bool(self.add("MVN", [x], [x] if inplace else None, f"mvn_param {{ {params}}}" if params else ""))

    def embed(self) -> bool:
        """Indices from the data: a Threshold's 0/1 values, embedded."""
        x = self.choose(lambda v: v.ndim <= 4 and v.size <= 400)
        if x is None:
            return False
        level = self.rng.uniform(-0.3, 0.3)
        tops = self.add("Threshold", [x], params=f"threshold_param {{ threshold: {level:.3f} }}")
        if not tops:
            return False
        params = f"num_output: {int(self.rng.integers(1, 7))} input_dim: {int(self.rng.integers(2, 5))} "
        if self.chance(0.3):
            params += "bias_term: false "
        return bool(self.add("Embed", tops, params=f"embed_param {{ {params}}}"))

    # -- SSD (weiliu89): Normalize, Permute, and a whole detection head ending in DetectionOutput

    def normalize(self) -> bool:
        x = self.choose(lambda v: 2 <= v.ndim <= 4)
        if x is None:
            return False
        params = "" if self.chance(0.3) else "across_spatial: false "
        if self.chance(0.5):
            params += "channel_shared: false "
        if self.chance(0.3):
            params += f"eps: {self.pick([1e-6, 0.01, 1.0])} "
        return bool(self.add("Normalize", [x], params=f"norm_param {{ {params}}}"))

    def permute(self) -> bool:
        x = self.choose(lambda v: 2 <= v.ndim <= 5)
        if x is None:
            return False
        axes = [int(a) for a in self.rng.permutation(self.values[x].ndim)]
        order = axes[: int(self.rng.integers(1, len(axes) + 1))]
        if order == sorted(order) and order == list(range(len(order))):
            return False  # identity: Caffe shares the bottom's memory (not modelled by the builder)
        params = "".join(f"order: {a} " for a in order)
        return bool(self.add("Permute", [x], params=f"permute_param {{ {params}}}"))

    def ssd_head(self) -> bool:
        """PriorBox on a feature map, 1x1 loc/conf convolutions -> Permute -> Flatten, conf Reshape-Softmax-
        Flatten, and DetectionOutput with random NMS/keep_top_k/code settings (its rows end the branch)."""
        feat = self.choose(lambda v: v.ndim == 4 and v.shape[2] * v.shape[3] <= 64)
        if feat is None:
            return False
        ratios = [r for r in (2.0, 3.0, 0.5, 1.0) if self.chance(0.35)]
        params = f"min_size: {self.pick([2, 4, 6.5])} "
        if self.chance(0.5):
            params += f"max_size: {self.pick([7, 9.5])} "
        params += "".join(f"aspect_ratio: {r} " for r in ratios)
        params += self.pick(["", "flip: false ", "flip: true "])
        params += self.pick(["", "clip: false ", "clip: true "])
        four = "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
        params += self.pick(["", "variance: 0.2 ", four])
        params += self.pick(["", "step: 3 ", "step_h: 2 step_w: 4 "]) + self.pick(["", "offset: 0.25 "])
        params += self.pick(["", "img_size: 12 ", "img_h: 10 img_w: 14 "])
        priors = self.add("PriorBox", [feat, "data" if self.values["data"].ndim == 4 else feat],
                          params=f"prior_box_param {{ {params}}}")  # fmt: skip
        if not priors:
            return False
        h, w = self.shape(feat)[2:]
        per_cell = self.values[priors[0]].shape[2] // (4 * h * w)
        classes = int(self.rng.integers(2, 5))
        share = self.chance(0.75)
        flat = []
        for outputs in (per_cell * 4 * (1 if share else classes), per_cell * classes):
            conv_params = f"convolution_param {{ num_output: {outputs} kernel_size: 1 }}"
            conv = self.add("Convolution", [feat], params=conv_params)
            perm = self.add("Permute", conv, params="permute_param { order: 0 order: 2 order: 3 order: 1 }")
            flat += self.add("Flatten", perm, params="flatten_param { axis: 1 }") if perm else []
        if len(flat) != 2:
            return False
        reshape = f"reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }}"
        shaped = self.add("Reshape", [flat[1]], params=reshape)
        soft = self.add("Softmax", shaped, params="softmax_param { axis: 2 }") if shaped else []
        conf = self.add("Flatten", soft, params="flatten_param { axis: 1 }") if soft else []
        if not conf or np.unique(self.values[conf[0]]).size < self.values[conf[0]].size:
            return False  # tied scores make NMS order and keep_top_k's cut depend on float rounding
        nms = f"nms_threshold: {self.pick([0.0, 0.3, 0.45, 0.7])} "
        if self.chance(0.3):
            nms = f"nms_threshold: 0.8 eta: {self.pick([0.5, 0.9])} "
        if self.chance(0.5):
            nms += f"top_k: {self.pick([0, 3, 10])} "
        keep_top_k = self.pick(["", "keep_top_k: 2 ", "keep_top_k: 6 ", "keep_top_k: 20 "])
        det = f"num_classes: {classes} nms_param {{ {nms}}} "
        det += f"code_type: {self.pick(['CORNER', 'CENTER_SIZE', 'CORNER_SIZE'])} "
        background = ["", f"background_label_id: {classes - 1} "] + ([] if share else ["background_label_id: -1 "])
        det += ("" if share else "share_location: false ") + self.pick(background)
        det += self.pick(["", "variance_encoded_in_target: true "])
        det += keep_top_k
        det += self.pick(["", "confidence_threshold: 0.2 ", "confidence_threshold: 0.45 "])
        det_params = f"detection_output_param {{ {det}}}"
        tops = self.add("DetectionOutput", [flat[0], conf[0], priors[0]], params=det_params)
        self.terminal.update(tops)  # rows of a data-dependent count
        return bool(tops)

    def filter(self) -> bool:
        """Items kept where a per-item selector from the data (Reduction + Threshold) is non-zero."""
        x = self.choose(lambda v: v.ndim >= 2)
        if x is None:
            return False
        sums = self.add("Reduction", [x], params="reduction_param { axis: 1 }")
        if not sums:
            return False
        level = self.rng.uniform(-1, 1)
        selector = self.add("Threshold", sums, params=f"threshold_param {{ threshold: {level:.3f} }}")
        if not selector:
            return False
        tops = self.add("Filter", [x, selector[0]])
        self.terminal.update(tops)  # its batch depends on the data; keep the net's shapes predictable
        return bool(tops)

    def roi_layers(self) -> bool:
        """ROIPooling or PSROIPooling of a feature map over regions held by a Parameter layer."""
        feat = self.choose(lambda v: v.ndim == 4 and v.shape[2] >= 2 and v.shape[3] >= 2)
        if feat is None:
            return False
        count = int(self.rng.integers(1, 5))
        rois = self.add("Parameter", [], params=f"parameter_param {{ shape {{ dim: {count} dim: 5 }} }}")
        if not rois:
            return False
        scale = self.pick([1, 0.5, 0.25])
        channels = self.shape(feat)[1]
        groups = [g for g in (1, 2, 3) if channels % (g * g) == 0]
        if self.chance(0.5) and groups:
            group = self.pick(groups)
            params = f"spatial_scale: {scale} output_dim: {channels // (group * group)} group_size: {group}"
            return bool(self.add("PSROIPooling", [feat, rois[0]], params=f"psroi_pooling_param {{ {params} }}"))
        pooled = f"pooled_h: {self.rng.integers(1, 4)} pooled_w: {self.rng.integers(1, 4)}"
        params = f"roi_pooling_param {{ {pooled} spatial_scale: {scale} }}"
        return bool(self.add("ROIPooling", [feat, rois[0]], params=params))

    # -- fork layers (SENet, MobileNet, ShuffleNet, YOLOv2, BVLC SPP/Im2col)

    def se_axpy(self) -> bool:
        """SENet block: global AVE pooling -> 1x1 conv or InnerProduct -> ReLU -> back to C -> Sigmoid
        -> Axpy(scale, x, y) = scale * x + y."""
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        c = self.shape(x)[1]
        pooled = self.pool(x, "pool: AVE global_pooling: true")
        if not pooled:
            return False
        squeeze = max(1, c // 2)
        kind, field = self.pick([("Convolution", "convolution_param"), ("InnerProduct", "inner_product_param")])
        size = " kernel_size: 1" if kind == "Convolution" else ""
        down = self.add(kind, pooled, params=f"{field} {{ num_output: {squeeze}{size} }}")
        if not down:
            return False
        self.add("ReLU", down, down)
        up = self.add(kind, down, params=f"{field} {{ num_output: {c}{size} }}")
        if not up:
            return False
        self.add("Sigmoid", up, up)
        y = x if self.chance(0.2) else self.same_shape_branch(x)
        return bool(y and self.add("Axpy", [up[0], x, y]))

    def shuffle_channel(self) -> bool:
        x = self.choose(lambda v: v.ndim >= 2 and v.shape[1] >= 2)
        if x is None:
            return False
        c = self.shape(x)[1]
        group = int(self.pick([d for d in range(1, c + 1) if c % d == 0 and d not in (1, c)] or [1, c]))
        params = f"shuffle_channel_param {{ group: {group} }}" if group != 1 or self.chance(0.5) else ""
        return bool(self.add("ShuffleChannel", [x], params=params))

    def depthwise(self) -> bool:
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        c = self.shape(x)[1]
        kh = kw = int(self.pick([1, 3, 3, 5]))
        if self.chance(0.2):
            kw = int(self.pick([1, 2, 3]))
        params = f"kernel_size: {kh} " if kh == kw else f"kernel_h: {kh} kernel_w: {kw} "
        params += f"stride: {self.pick([1, 1, 2])} pad: {self.pick([0, 1, 1, 2])} "
        if self.chance(0.15):
            params += "dilation: 2 "
        if self.chance(0.3):
            params += "bias_term: false "
        if self.chance(0.5):
            kind = "ConvolutionDepthwise"
            params += f"num_output: {c} " if self.chance(0.8) else ""
        else:
            kind = "DepthwiseConvolution"
            params += f"num_output: {c * int(self.pick([1, 1, 2]))} group: {c} "
        return bool(self.add(kind, [x], params=f"convolution_param {{ {params}}}"))

    def reorg_spp_im2col(self) -> bool:
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        n, c, h, w = self.shape(x)
        kind = self.pick(["Reorg", "Reorg", "SPP", "Im2col"])
        if kind == "Reorg":
            reverse = self.chance(0.3)
            if c % 4:
                tops = self.add("Convolution", [x], params="convolution_param { num_output: 4 kernel_size: 1 }")
                if not tops:
                    return False
                x = tops[0]
            params = "stride: 2 " + ("reverse: true " if reverse else "")
            return bool(self.add("Reorg", [x], params=f"reorg_param {{ {params}}}"))
        if kind == "SPP":
            pool = self.pick(["MAX", "AVE"])
            params = f"pyramid_height: {self.pick([1, 2, 2, 3])} pool: {pool}"
            return bool(self.add("SPP", [x], params=f"spp_param {{ {params} }}"))
        k = int(self.pick([1, 2, 3]))
        params = f"kernel_size: {k} stride: {self.pick([1, 2])} pad: {self.pick([0, 1])} "
        if self.chance(0.2):
            params += "dilation: 2 "
        return bool(self.add("Im2col", [x], params=f"convolution_param {{ {params}}}"))

    def resample(self) -> bool:
        """Segmentation / resampling fork layers (layers_resample.py)."""
        x = self.choose(lambda v: v.ndim == 4)
        if x is None:
            return False
        n, c, h, w = self.shape(x)
        kind = self.pick(["Pad", "PixelShuffle", "Resize", "Bilinear", "Interp", "Upsample", "BN", "Unpool"])
        if kind == "Pad":
            pad_type = self.pick(["CONSTANT", "REPLICATE", "REFLECT"])
            if self.chance(0.15) and h > 2 and w > 2:
                pads = [-int(self.rng.integers(1, (s + 1) // 2)) for s in (h, h, w, w)]
            else:
                limit = [h, h, w, w] if pad_type == "REFLECT" else [4] * 4
                pads = [int(self.rng.integers(0, min(4, m))) for m in limit]
            fields = " ".join(
                f"{f}: {v}" for f, v in zip(("pad_u", "pad_d", "pad_l", "pad_r"), pads, strict=True)
            )
            value = f" pad_value: {self.pick([0.0, 1.5, -2.0])}" if pad_type == "CONSTANT" else ""
            return bool(self.add("Pad", [x], params=f"pad_param {{ pad_type: {pad_type} {fields}{value} }}"))
        if kind == "PixelShuffle":
            factor = int(self.pick([2, 2, 3]))
            if c % factor or c < factor * factor:
                tops = self.add(
                    "Convolution",
                    [x],
                    params=f"convolution_param {{ num_output: {factor**2} kernel_size: 1 }}",
                )
                if not tops:
                    return False
                x = tops[0]
            return bool(
                self.add("PixelShuffle", [x], params=f"pixelshuffle_param {{ upscale_factor: {factor} }}")
            )
        if kind == "Resize":
            if self.chance(0.3):
                hs, ws = self.pick([0.5, 1.3, 1.5, 2.0]), self.pick([0.7, 1.0, 2.5])
                params = f"is_pyramid_test: true out_height_scale: {hs} out_width_scale: {ws}"
            else:
                params = f"height: {self.rng.integers(1, 2 * h + 1)} width: {self.rng.integers(1, 2 * w + 1)}"
            return bool(self.add("Resize", [x], params=f"resize_param {{ {params} }}"))
        if kind == "Bilinear":
            align = self.chance(0.5)
            if self.chance(0.3):
                params = f"scale_factor: {self.pick([0.5, 1.5, 2.0])}"
            else:
                low = 2 if align else 1
                params = (
                    f"dst_h: {self.rng.integers(low, 2 * h + 1)} dst_w: {self.rng.integers(low, 2 * w + 1)}"
                )
            params += f" align_corners: {'true' if align else 'false'}"
            return bool(
                self.add("BilinearInterpolate", [x], params=f"bilinear_interpolate_param {{ {params} }}")
            )
        if kind == "Interp":
            params = self.pick(
                [
                    f"zoom_factor: {self.pick([2, 3])}",
                    f"shrink_factor: {self.pick([2, 3])}",
                    f"height: {self.rng.integers(1, 2 * h + 1)} width: {self.rng.integers(1, 2 * w + 1)}",
                    "shrink_factor: 2 zoom_factor: 3",
                ]
            )
            if self.chance(0.2) and h > 3 and w > 3:
                params += f" pad_beg: {-int(self.rng.integers(0, 2))} pad_end: -1"
            return bool(self.add("Interp", [x], params=f"interp_param {{ {params} }}"))
        if kind == "Upsample":
            scale = self.pick(["", "upsample_param { scale: 2 }", "upsample_param { scale: 3 }"])
            return bool(self.add("Upsample", [x], params=scale))
        if kind == "BN":
            # The blob layout picks the fork (see layer_blobs): bn_mode -> caffe-segnet's 2 blobs,
            # engine: CAFFE -> brocolli-caffe's (1, C) blobs, else PSPNet's (1, C, 1, 1).
            params = self.pick(
                ["bn_mode: INFERENCE", "bn_mode: LEARN", "eps: 0.001", "", "engine: CAFFE eps: 0.1"]
            )
            tops = self.add("BN", [x], [x] if self.chance(0.6) else None, f"bn_param {{ {params} }}")
            return bool(tops)
        kernel, stride = self.pick([(2, 2), (3, 2), (2, 1)])
        pooled = self.add(
            "Pooling",
            [x],
            [self.blob_name(), self.blob_name()],
            params=f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} }}",
        )
        if not pooled:
            return False
        values, mask = pooled
        if self.chance(0.6):
            tops = self.add(
                "Convolution", [values], params=f"convolution_param {{ num_output: {c} kernel_size: 1 }}"
            )
            values = tops[0] if tops else values
        if self.chance(0.5):
            dst = f"dst_h: {h + int(self.rng.integers(0, 2))} dst_w: {w + int(self.rng.integers(0, 2))}"
            return bool(self.add("MaxUnPool", [values, mask], params=f"max_unpool_param {{ {dst} }}"))
        return bool(
            self.add(
                "Upsample", [values, mask], params=f"upsample_param {{ upsample_h: {h} upsample_w: {w} }}"
            )
        )

    MOVES = {
        "conv": 6,
        "deconv": 2,
        "pool": 4,
        "activation": 6,
        "positive_chain": 1,
        "bn_chain": 2,
        "scale_or_bias": 2,
        "lrn": 1.5,
        "eltwise": 2,
        "concat": 2,
        "slice": 1.5,
        "split": 0.7,
        "flatten": 1,
        "reshape": 1.5,
        "softmax": 1,
        "crop": 1.2,
        "argmax": 1,
        "inner_product": 1.5,
        "two_bottom_scale": 1,
        "se_axpy": 0.8,
        "shuffle_channel": 0.6,
        "depthwise": 1,
        "reorg_spp_im2col": 0.6,
        "fork_activation": 2,
        "reduction": 1,
        "tile": 1,
        "mvn": 1,
        "embed": 0.5,
        "filter": 0.5,
        "roi_layers": 0.8,
        "normalize": 1,
        "permute": 1,
        "ssd_head": 2,
        "resample": 2,
    }


def _input_block(rng: np.random.Generator, shape: tuple[int, ...]) -> str:
    style = int(rng.integers(3))
    dims = "".join(f"dim: {d} " for d in shape)
    if style == 0 and len(shape) == 4:  # input_dim comes in groups of four
        return 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in shape)
    if style == 1:
        return f'input: "data"\ninput_shape {{ {dims}}}\n'
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims}}} }} }}\n'


def _build(rng: np.random.Generator) -> tuple[str, tuple[int, ...]]:
    batch = int(rng.integers(1, 3))
    if rng.random() < 0.85:
        shape: tuple[int, ...] = (
            batch,
            int(rng.integers(1, 5)),
            int(rng.integers(5, 13)),
            int(rng.integers(5, 13)),
        )
    elif rng.random() < 0.5:
        shape = (batch, int(rng.integers(2, 40)))
    else:
        shape = (batch, int(rng.integers(1, 6)), int(rng.integers(2, 12)))
    b = _Builder(rng)
    b.values["data"] = rng.standard_normal(shape).astype(np.float32)
    b.buffer["data"] = -1
    b.recent.append("data")
    names = list(_Builder.MOVES)
    probs = np.array([_Builder.MOVES[n] for n in names], dtype=float)
    probs /= probs.sum()
    target = int(rng.integers(3, 10))
    done = tries = 0
    while done < target and tries < 60:
        tries += 1
        move = getattr(b, names[int(rng.choice(len(names), p=probs))])
        if move():
            done += 1
    text = f'name: "fuzz"\n{_input_block(rng, shape)}' + "\n".join(b.layers) + "\n"
    return text, shape


def is_well_conditioned(prototxt_text: str, shape: tuple[int, ...], seed: int) -> bool:
    weights = random_weights(prototxt_text, seed)
    blobs = cr.forward(prototxt_text, weights, {"data": random_input(shape, seed)})
    return all(np.all(np.isfinite(v)) and np.abs(v).max(initial=0) <= MAX_ABS_VALUE for v in blobs.values())


def random_net(seed: int) -> tuple[str, tuple[int, ...]]:
    """A valid random deploy net (prototxt text) with one input blob `data`, and that input's shape."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, 0, attempt])
        text, shape = _build(rng)
        if len(cr.parse_net(text).layer) >= 2 and is_well_conditioned(text, shape, seed):
            return text, shape
    raise RuntimeError(f"no well-conditioned random net for seed {seed}")
