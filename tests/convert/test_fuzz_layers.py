"""Fuzz and per-layer tests: camcaffe's ONNX output against an independent numpy model of Caffe.

The oracle (`tests/caffe_reference.py`) was written from BVLC Caffe's layer sources, not from the
converter, and is itself checked against real Caffe outputs in ../shared/golden. Every blob of every net
is compared: max|onnx - ref| <= 1e-4 * max(1, max|ref|).

`CAMCAFFE_FUZZ_SEEDS=N` changes the number of random nets, `CAMCAFFE_FUZZ_FIRST=K` the first seed,
`CAMCAFFE_FUZZ_ALIASING=0` keeps in-place layers off blobs that share memory (Split/Flatten/Reshape tops).
A failing net is reported with a greedily minimised prototxt that still fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from camcaffe.caffe.caffemodel import read_caffemodel, write_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.errors import CamcaffeError
from tests import caffe_reference as cr
from tests import random_nets as rn

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
GOLDEN = SHARED / "golden"
RTOL = 1e-4
FIRST_SEED = int(os.environ.get("CAMCAFFE_FUZZ_FIRST", "0"))
N_SEEDS = int(os.environ.get("CAMCAFFE_FUZZ_SEEDS", "150"))
MAX_REFUSED_FRACTION = 0.03


# ------------------------------------------------------------------------------------------- machinery


class Refused(Exception):
    """The converter declined the net with a typed camcaffe error."""


@dataclass
class Comparison:
    worst: float = 0.0
    worst_blob: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref64.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        delta = np.abs(ref64 - got64).max()
    if not np.isfinite(delta):
        return float("inf")
    return float(delta / max(1.0, float(np.abs(ref64).max())))


def run_converted(
    workdir: Path, text: str, weights: dict, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Write prototxt + caffemodel, convert with every blob exposed, run with ONNX Runtime (CPU).

    Returns Caffe blob name -> value; raises Refused when camcaffe declines the net."""
    import onnxruntime as ort

    workdir.mkdir(parents=True, exist_ok=True)
    prototxt, caffemodel, onnx_path = (
        workdir / "deploy.prototxt",
        workdir / "w.caffemodel",
        workdir / "m.onnx",
    )
    prototxt.write_text(text)
    write_caffemodel(caffemodel, rn.caffemodel_layers(text, weights))
    try:
        result = convert_files(prototxt, caffemodel, onnx_path, ConvertOptions(expose_all=True))
    except CamcaffeError as exc:
        raise Refused(f"{type(exc).__name__}: {exc}") from exc
    blob_tensors = result.converted.blob_tensors
    ort.set_default_logger_severity(3)  # failing kernels are reported through the test, not stderr
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]
    if len(graph_inputs) == 1 and len(inputs) == 1:
        feeds = {graph_inputs[0]: next(iter(inputs.values()))}
    else:
        by_tensor = {blob_tensors.get(name, name): value for name, value in inputs.items()}
        feeds = {name: by_tensor[name] for name in graph_inputs}
    output_names = {o.name for o in session.get_outputs()}
    wanted = sorted({t for t in blob_tensors.values() if t in output_names})
    values = dict(zip(wanted, session.run(wanted, feeds), strict=True))
    values.update({name: value for name, value in feeds.items() if name not in values})
    return {blob: values[t] for blob, t in blob_tensors.items() if t in values}


def compare_blobs(reference: dict[str, np.ndarray], converted: dict[str, np.ndarray]) -> Comparison:
    comparison = Comparison()
    for blob, ref in reference.items():
        if blob not in converted:
            comparison.problems.append(f"blob {blob!r} {ref.shape}: not exposed by the ONNX model")
            continue
        got = np.asarray(converted[blob])
        if tuple(got.shape) != tuple(ref.shape):
            comparison.problems.append(f"blob {blob!r}: shape {tuple(got.shape)}, Caffe {tuple(ref.shape)}")
            continue
        err = relative_error(ref, got)
        if err > comparison.worst:
            comparison.worst, comparison.worst_blob = err, blob
        if not err <= RTOL:
            diff = np.abs(np.asarray(got, np.float64) - ref)
            where = np.unravel_index(int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff))), ref.shape)
            comparison.problems.append(
                f"blob {blob!r} {ref.shape}: rel err {err:.3g}; at {tuple(int(i) for i in where)} "
                f"Caffe {float(ref[where]):.6g}, ONNX {float(got[where]):.6g}"
            )
    return comparison


def check_net(
    workdir: Path,
    text: str,
    seed: int,
    inputs: dict[str, np.ndarray] | None = None,
    weights: dict | None = None,
) -> Comparison:
    net = cr.parse_net(text)
    if inputs is None:
        inputs = {name: rn.random_input(shape, seed) for name, shape in cr.declared_inputs(net).items()}
    weights = rn.random_weights(text, seed) if weights is None else weights
    reference = cr.forward(text, weights, inputs)
    return compare_blobs(reference, run_converted(workdir, text, weights, inputs))


def minimise(workdir: Path, text: str, seed: int) -> str:
    """Greedily drop layers while the net stays valid (for the reference) and still mismatches."""
    lines = text.splitlines()
    header = [ln for ln in lines if not ln.startswith("layer {") or '"Input"' in ln]
    layers = [ln for ln in lines if ln.startswith("layer {") and '"Input"' not in ln]
    changed = True
    attempt = 0
    while changed:
        changed = False
        for i in reversed(range(len(layers))):
            candidate = "\n".join(header + layers[:i] + layers[i + 1 :]) + "\n"
            attempt += 1
            try:
                comparison = check_net(workdir / f"min{attempt}", candidate, seed)
            except (cr.ReferenceError, Refused, ValueError, KeyError):
                continue
            except Exception:  # a converter/runtime crash reproduces a bug as well
                comparison = Comparison(problems=["crash"])
            if not comparison.ok:
                layers.pop(i)
                changed = True
    return "\n".join(header + layers) + "\n"


# ------------------------------------------------------------------------------------------- fuzzing


def test_reference_is_deterministic_and_nets_are_valid():
    for seed in range(FIRST_SEED, FIRST_SEED + 5):
        text, shape = rn.random_net(seed)
        assert (text, shape) == rn.random_net(seed)
        weights = rn.random_weights(text, seed)
        a = cr.forward(text, weights, {"data": rn.random_input(shape, seed)})
        b = cr.forward(text, rn.random_weights(text, seed), {"data": rn.random_input(shape, seed)})
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_random_nets_match_reference(tmp_path):
    seeds = range(FIRST_SEED, FIRST_SEED + N_SEEDS)
    matched, refused, failures = 0, [], []
    worst, worst_where = 0.0, ""
    for seed in seeds:
        text, _ = rn.random_net(seed)
        try:
            comparison = check_net(tmp_path / str(seed), text, seed)
        except Refused as exc:
            refused.append(f"seed {seed}: {exc}")
            continue
        except Exception as exc:  # converter or ONNX Runtime crash: a bug as well
            small = minimise(tmp_path / f"{seed}-min", text, seed)
            failures.append(f"seed {seed}: {type(exc).__name__}: {str(exc)[:400]}\nminimal net:\n{small}")
            continue
        if comparison.worst > worst:
            worst, worst_where = comparison.worst, f"seed {seed} blob {comparison.worst_blob!r}"
        if comparison.ok:
            matched += 1
        else:
            small = minimise(tmp_path / f"{seed}-min", text, seed)
            failures.append(
                f"seed {seed}: " + "; ".join(comparison.problems[:4]) + f"\nminimal net:\n{small}"
            )
        shutil.rmtree(tmp_path / str(seed), ignore_errors=True)
    summary = (
        f"{len(seeds)} nets: {matched} matched, {len(failures)} failed, {len(refused)} refused; "
        f"worst rel err {worst:.3g} ({worst_where})"
    )
    print(summary)
    report = "\n\n".join([summary, *failures, *refused])
    assert not failures, report
    assert len(refused) <= MAX_REFUSED_FRACTION * len(seeds), report


# ------------------------------------------------------------------------------------------- per layer

IN = (2, 3, 7, 8)


def _l(
    name: str, type_: str, bottoms: str | list[str], tops: str | list[str] | None = None, params: str = ""
) -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [name] if tops is None else [tops] if isinstance(tops, str) else tops
    text = f'layer {{ name: "{name}" type: "{type_}" '
    text += "".join(f'bottom: "{b}" ' for b in bottoms) + "".join(f'top: "{t}" ' for t in tops)
    return text + params + " }\n"


def _net(layers: str, shape: tuple[int, ...] = IN, style: str = "input_dim") -> str:
    dims = "".join(f"dim: {d} " for d in shape)
    if style == "input_dim" and len(shape) == 4:  # input_dim comes in groups of four
        head = 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in shape)
    elif style in ("input_shape", "input_dim"):
        head = f'input: "data"\ninput_shape {{ {dims}}}\n'
    else:
        head = f'layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ {dims}}} }} }}\n'
    return f'name: "case"\n{head}{layers}'


CONV3 = _l("c", "Convolution", "data", params="convolution_param { num_output: 6 kernel_size: 3 pad: 1 }")
SIG = _l("sig", "Sigmoid", "data")
TWO = _l("a", "TanH", "data") + _l("b", "Sigmoid", "data")
GAP = _l("g", "Pooling", "data", params="pooling_param { pool: AVE global_pooling: true }") + _l(
    "f", "Flatten", "g"
)
TH = _l("th", "Threshold", "data", params="threshold_param { threshold: 0.2 }")


def _conv(params: str, type_: str = "Convolution") -> str:
    return _l("c", type_, "data", params=f"convolution_param {{ {params} }}")


def _pool(params: str) -> str:
    return _l("p", "Pooling", "data", params=f"pooling_param {{ {params} }}")


def _one(type_: str, params: str = "", bottom: str = "data", inplace: bool = False) -> str:
    return _l("x", type_, bottom, bottom if inplace else None, params)


CASES: list[tuple[str, str]] = [
    ("Input-input_shape", _net(CONV3, style="input_shape")),
    ("Input-layer", _net(CONV3, style="layer")),
    (
        "Convolution-group-dilation",
        _net(_conv("num_output: 6 kernel_size: 3 group: 3 dilation: 2 pad: 2 stride: 2")),
    ),
    (
        "Convolution-hw-params",
        _net(_conv("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0")),
    ),
    (
        "Convolution-repeated",
        _net(_conv("num_output: 4 kernel_size: 1 kernel_size: 3 stride: 1 stride: 2 pad: 0 pad: 1")),
    ),
    ("Convolution-depthwise-nobias", _net(_conv("num_output: 6 kernel_size: 3 group: 3 bias_term: false"))),
    ("Convolution-dilation-hw", _net(_conv("num_output: 2 kernel_size: 2 dilation: 2 dilation: 3"))),
    ("Deconvolution", _net(_conv("num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 1", "Deconvolution"))),
    (
        "Deconvolution-grouped",
        _net(_conv("num_output: 6 kernel_size: 3 stride: 2 group: 3", "Deconvolution")),
    ),
    (
        "Deconvolution-rect-dil",
        _net(
            _conv(
                "num_output: 2 kernel_h: 3 kernel_w: 2 stride: 3 dilation: 2 bias_term: false",
                "Deconvolution",
            )
        ),
    ),
    ("InnerProduct", _net(_one("InnerProduct", "inner_product_param { num_output: 5 }"))),
    ("InnerProduct-axis2", _net(_one("InnerProduct", "inner_product_param { num_output: 5 axis: 2 }"))),
    (
        "InnerProduct-transpose",
        _net(_one("InnerProduct", "inner_product_param { num_output: 4 transpose: true }")),
    ),
    (
        "InnerProduct-axis-1-nobias",
        _net(_one("InnerProduct", "inner_product_param { num_output: 3 axis: -1 bias_term: false }")),
    ),
    ("Pooling-max-pad-ceil", _net(_pool("pool: MAX kernel_size: 3 stride: 2 pad: 1"))),
    ("Pooling-ave-pad-ceil", _net(_pool("pool: AVE kernel_size: 3 stride: 2 pad: 1"))),
    ("Pooling-last-window-rule", _net(_pool("pool: AVE kernel_size: 2 stride: 2 pad: 1"), (1, 2, 5, 5))),
    ("Pooling-max-last-window-rule", _net(_pool("pool: MAX kernel_size: 2 stride: 2 pad: 1"), (1, 2, 5, 5))),
    ("Pooling-ceil-overhang-nopad", _net(_pool("pool: AVE kernel_size: 3 stride: 2"), (1, 2, 8, 8))),
    ("Pooling-stride-gt-kernel", _net(_pool("pool: MAX kernel_size: 2 stride: 3"))),
    (
        "Pooling-rect",
        _net(_pool("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1")),
    ),
    ("Pooling-global-max", _net(_pool("pool: MAX global_pooling: true"))),
    ("Pooling-global-ave", _net(_pool("pool: AVE global_pooling: true"))),
    ("Pooling-floor", _net(_pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"))),
    ("ReLU-leaky-inplace", _net(CONV3 + _l("r", "ReLU", "c", "c", "relu_param { negative_slope: 0.1 }"))),
    ("PReLU", _net(_one("PReLU"))),
    ("PReLU-shared", _net(_one("PReLU", "prelu_param { channel_shared: true }"))),
    ("ELU", _net(_one("ELU", "elu_param { alpha: 0.7 }"))),
    ("Sigmoid", _net(_one("Sigmoid"))),
    ("TanH", _net(_one("TanH"))),
    ("AbsVal", _net(_one("AbsVal"))),
    ("BNLL", _net(_one("BNLL"))),
    ("Power", _net(_one("Power", "power_param { power: 2 scale: -0.5 shift: 0.3 }"))),
    ("Power-fractional", _net(SIG + _one("Power", "power_param { power: 0.5 scale: 2 shift: 0.1 }", "sig"))),
    ("Power-zero", _net(_one("Power", "power_param { power: 0 scale: 2 shift: 1 }"))),
    ("Exp", _net(_one("Exp"))),
    ("Exp-base-scale-shift", _net(_one("Exp", "exp_param { base: 2 scale: 0.5 shift: -1 }"))),
    ("Log", _net(SIG + _one("Log", "", "sig"))),
    ("Log-base-scale-shift", _net(SIG + _one("Log", "log_param { base: 10 scale: 3 shift: 0.5 }", "sig"))),
    ("Threshold", _net(_one("Threshold", "threshold_param { threshold: 0.3 }"))),
    ("Dropout-inplace", _net(CONV3 + _l("d", "Dropout", "c", "c", "dropout_param { dropout_ratio: 0.3 }"))),
    (
        "Dropout-no-scale-train",
        _net(_one("Dropout", "dropout_param { dropout_ratio: 0.3 scale_train: false }")),
    ),
    ("LRN-across-k", _net(_one("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"))),
    ("LRN-across-default", _net(_one("LRN", "lrn_param { local_size: 5 alpha: 0.9 }"), (1, 7, 4, 4))),
    (
        "LRN-within",
        _net(
            _one("LRN", "lrn_param { local_size: 3 alpha: 0.6 beta: 0.6 k: 5 norm_region: WITHIN_CHANNEL }")
        ),
    ),
    (
        "BatchNorm-inplace-chain",
        _net(
            CONV3
            + _l("bn", "BatchNorm", "c", "c", "batch_norm_param { eps: 0.001 }")
            + _l("sc", "Scale", "c", "c", "scale_param { bias_term: true }")
            + _l("r", "ReLU", "c", "c")
        ),
    ),
    (
        "BatchNorm-2d",
        _net(_one("InnerProduct", "inner_product_param { num_output: 5 }") + _l("bn", "BatchNorm", "x", "x")),
    ),
    ("Scale", _net(_one("Scale"))),
    ("Scale-axis-numaxes", _net(_one("Scale", "scale_param { axis: 2 num_axes: 2 bias_term: true }"))),
    ("Scale-all-axes", _net(_one("Scale", "scale_param { axis: 1 num_axes: -1 }"))),
    ("Scale-scalar", _net(_one("Scale", "scale_param { num_axes: 0 bias_term: true }"))),
    ("Scale-negative-axis", _net(_one("Scale", "scale_param { axis: -1 }"))),
    ("Scale-two-bottoms", _net(GAP + _l("s", "Scale", ["data", "f"], None, "scale_param { axis: 0 }"))),
    (
        "Scale-two-bottoms-bias",
        _net(GAP + _l("s", "Scale", ["data", "f"], None, "scale_param { axis: 0 bias_term: true }")),
    ),
    ("Scale-two-bottoms-full", _net(TWO + _l("s", "Scale", ["a", "b"], None, "scale_param { axis: 0 }"))),
    ("Bias", _net(_one("Bias"))),
    ("Bias-axis-numaxes", _net(_one("Bias", "bias_param { axis: 2 num_axes: 2 }"))),
    ("Bias-two-bottoms", _net(GAP + _l("s", "Bias", ["data", "f"], None, "bias_param { axis: 0 }"))),
    (
        "Eltwise-sum-coeff",
        _net(
            TWO
            + _l(
                "e",
                "Eltwise",
                ["a", "b", "data"],
                None,
                "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }",
            )
        ),
    ),
    ("Eltwise-sum", _net(TWO + _l("e", "Eltwise", ["a", "b"]))),
    (
        "Eltwise-prod",
        _net(TWO + _l("e", "Eltwise", ["a", "b", "data"], None, "eltwise_param { operation: PROD }")),
    ),
    ("Eltwise-max", _net(TWO + _l("e", "Eltwise", ["a", "b"], None, "eltwise_param { operation: MAX }"))),
    (
        "Eltwise-same-bottom-twice",
        _net(TWO + _l("e", "Eltwise", ["a", "a"], None, "eltwise_param { coeff: 1 coeff: 2 }")),
    ),
    ("Concat", _net(TWO + _l("k", "Concat", ["a", "b", "data"]))),
    ("Concat-axis3", _net(TWO + _l("k", "Concat", ["a", "b"], None, "concat_param { axis: 3 }"))),
    ("Concat-axis0", _net(TWO + _l("k", "Concat", ["a", "b"], None, "concat_param { axis: 0 }"))),
    ("Concat-concat_dim", _net(TWO + _l("k", "Concat", ["a", "b"], None, "concat_param { concat_dim: 2 }"))),
    ("Concat-negative-axis", _net(TWO + _l("k", "Concat", ["a", "b"], None, "concat_param { axis: -2 }"))),
    (
        "Slice-points",
        _net(_l("s", "Slice", "data", ["s1", "s2", "s3"], "slice_param { slice_point: 1 slice_point: 2 }")),
    ),
    ("Slice-even-axis-1", _net(_l("s", "Slice", "data", ["s1", "s2"], "slice_param { axis: -1 }"))),
    (
        "Slice-slice_dim",
        _net(_l("s", "Slice", "data", ["s1", "s2"], "slice_param { slice_dim: 2 slice_point: 3 }")),
    ),
    ("Split", _net(_l("s", "Split", "data", ["s1", "s2"]) + _l("r", "ReLU", "s1", "r"))),
    ("Flatten", _net(_one("Flatten"))),
    ("Flatten-axis-end", _net(_one("Flatten", "flatten_param { axis: 2 end_axis: 3 }"))),
    ("Flatten-end-negative", _net(_one("Flatten", "flatten_param { axis: 0 end_axis: -2 }"))),
    ("Reshape-0-minus1", _net(_one("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 4 } }"))),
    (
        "Reshape-axis-numaxes",
        _net(_one("Reshape", "reshape_param { shape { dim: 3 dim: 1 dim: -1 } axis: 1 num_axes: 2 }")),
    ),
    ("Reshape-insert-axis", _net(_one("Reshape", "reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }"))),
    (
        "Reshape-then-conv",
        _net(
            _one("Reshape", "reshape_param { shape { dim: 0 dim: 0 dim: 8 dim: 7 } }")
            + _l("c", "Convolution", "x", None, "convolution_param { num_output: 2 kernel_size: 3 }")
        ),
    ),
    ("Softmax", _net(_one("Softmax"))),
    ("Softmax-axis2", _net(_one("Softmax", "softmax_param { axis: 2 }"))),
    ("Softmax-axis-neg", _net(_one("Softmax", "softmax_param { axis: -1 }"))),
    (
        "Softmax-2d",
        _net(_one("InnerProduct", "inner_product_param { num_output: 5 }") + _l("p", "Softmax", "x")),
    ),
    (
        "Crop",
        _net(
            _pool("pool: MAX kernel_size: 2 stride: 2")
            + _l("k", "Crop", ["data", "p"], None, "crop_param { offset: 1 }")
        ),
    ),
    (
        "Crop-offsets",
        _net(
            _pool("pool: MAX kernel_size: 2 stride: 2")
            + _l("k", "Crop", ["data", "p"], None, "crop_param { axis: 2 offset: 2 offset: 1 }")
        ),
    ),
    (
        "Crop-axis1",
        _net(
            _conv("num_output: 2 kernel_size: 3")
            + _l("k", "Crop", ["data", "c"], None, "crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }")
        ),
    ),
    ("ArgMax", _net(_one("ArgMax"))),
    ("ArgMax-topk-maxval", _net(_one("ArgMax", "argmax_param { top_k: 3 out_max_val: true }"))),
    ("ArgMax-axis", _net(_one("ArgMax", "argmax_param { axis: 1 }"))),
    ("ArgMax-axis-topk-maxval", _net(_one("ArgMax", "argmax_param { axis: 2 top_k: 2 out_max_val: true }"))),
    ("ArgMax-ties-flat", _net(TH + _one("ArgMax", "argmax_param { top_k: 2 }", "th"))),
    ("ArgMax-ties-axis", _net(TH + _one("ArgMax", "argmax_param { axis: 1 }", "th"))),
    ("ArgMax-ties-axis-topk", _net(TH + _one("ArgMax", "argmax_param { axis: 1 top_k: 2 }", "th"))),
    (
        "InPlace-read-before-overwrite",
        _net(CONV3 + _l("s", "Sigmoid", "c") + _l("r", "ReLU", "c", "c") + _l("e", "Eltwise", ["c", "s"])),
    ),
    ("InPlace-on-input", _net(_l("r", "ReLU", "data", "data") + CONV3)),
    ("Concat-single-bottom", _net(_l("k", "Concat", "data"))),
    ("Slice-single-top", _net(_l("s", "Slice", "data", ["s1"]))),
    # Split, Flatten, Reshape, one-bottom Concat and one-top Slice share their bottom's memory in Caffe
    # (Blob::ShareData): a later in-place layer on either blob changes both.
    (
        "Aliasing-flatten-then-inplace-on-source",
        _net(CONV3 + _l("f", "Flatten", "c") + _l("r", "ReLU", "c", "c")),
    ),
    (
        "Aliasing-reshape-then-inplace-on-top",
        _net(
            CONV3
            + _l("r", "Reshape", "c", "rs", "reshape_param { shape { dim: 0 dim: -1 } }")
            + _l("a", "AbsVal", "rs", "rs")
            + _l("p", "Pooling", "c", params="pooling_param { pool: MAX kernel_size: 2 }")
        ),
    ),
    (
        "Aliasing-split-then-inplace",
        _net(
            CONV3
            + _l("s", "Split", "c", ["s1", "s2"])
            + _l("r", "ReLU", "s1", "s1")
            + _l("e", "Eltwise", ["s1", "s2"], None, "eltwise_param { coeff: 1 coeff: -1 }")
        ),
    ),
    ("Aliasing-concat1-then-inplace", _net(CONV3 + _l("k", "Concat", "c") + _l("t", "TanH", "c", "c"))),
    (
        "Aliasing-reshape-all-then-inplace-on-top",
        _net(
            _l("r", "Reshape", "data", "r", "reshape_param { shape { dim: -1 } }") + _l("a", "ReLU", "r", "r")
        ),
    ),
    (
        "Aliasing-flatten-axis0-then-inplace-on-top",
        _net(_l("f", "Flatten", "data", "f", "flatten_param { axis: 0 }") + _l("a", "ReLU", "f", "f")),
    ),
    (
        "Aliasing-reshape-batch-moved-then-inplace-on-top",
        _net(
            _l("r", "Reshape", "data", "r", "reshape_param { shape { dim: 3 dim: -1 } }")
            + _l("a", "ReLU", "r", "r")
        ),
    ),
    (
        "Deconvolution-hw",
        _net(
            _conv(
                "num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0",
                "Deconvolution",
            )
        ),
    ),
    (
        "ArgMax-2d",
        _net(
            _one("InnerProduct", "inner_product_param { num_output: 6 }")
            + _l("am", "ArgMax", "x", params="argmax_param { top_k: 2 out_max_val: true }")
        ),
    ),
    ("ArgMax-3d", _net(_one("ArgMax", "argmax_param { top_k: 2 }"), (2, 5, 4))),
    ("Scale-batch-axis", _net(_one("Scale", "scale_param { axis: 0 num_axes: 1 }"))),
    ("BatchNorm-3d", _net(_l("bn", "BatchNorm", "data", "data"), (2, 4, 5))),
    (
        "Softmax-1d",
        _net(
            _one("InnerProduct", "inner_product_param { num_output: 6 axis: 0 }")
            + _l("p", "Softmax", "x", params="softmax_param { axis: 0 }")
        ),
    ),
    (
        "Input-2d",
        _net(
            _one("InnerProduct", "inner_product_param { num_output: 3 }") + _l("p", "Softmax", "x"),
            (2, 10),
            style="input_shape",
        ),
    ),
    (
        "Input-two",
        'input: "a"\ninput_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\ninput: "b"\n'
        "input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n"
        + _l("e", "Eltwise", ["a", "b"], None, "eltwise_param { operation: PROD }")
        + _l("k", "Concat", ["a", "e"]),
    ),
    (
        "Input-two-input_dim",
        'input: "a"\ninput: "b"\n'
        + "".join(f"input_dim: {d}\n" for d in (1, 2, 3, 4) * 2)
        + _l("e", "Eltwise", ["a", "b"], None, "eltwise_param { operation: MAX }"),
    ),
    (
        "Input-named-image",
        'layer { name: "in" type: "Input" top: "image" input_param { shape { dim: 1 dim: 3 '
        "dim: 6 dim: 6 } } }\n"
        + _l("r", "ReLU", "image", "image")
        + _l("c", "Convolution", "image", params="convolution_param { num_output: 2 kernel_size: 3 }"),
    ),
    (
        "Phase-rules",
        _net(
            CONV3
            + _l("d", "ReLU", "c", "c", "include { phase: TRAIN }")
            + _l("e", "TanH", "c", "c", "exclude { phase: TEST }")
            + _l("f", "Sigmoid", "c", "c", "include { phase: TEST }")
        ),
    ),
]


@pytest.mark.parametrize("text", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_layer_matches_reference(tmp_path, text):
    try:
        comparison = check_net(tmp_path, text, seed=3)
    except Refused as exc:
        pytest.fail(f"camcaffe refused a valid Caffe net: {exc}\n{text}")
    assert comparison.ok, "\n".join(comparison.problems) + f"\n{text}"


def test_batchnorm_zero_scale_factor(tmp_path):
    """Caffe: a moving-average factor of 0 means mean = var = 0 (not a division by zero)."""
    text = _net(_l("bn", "BatchNorm", "data", "bn"))
    weights = {"bn": [np.full(3, 0.7, np.float32), np.full(3, 5.0, np.float32), np.zeros(1, np.float32)]}
    try:
        comparison = check_net(tmp_path, text, seed=3, weights=weights)
    except Refused as exc:
        pytest.fail(f"camcaffe refused a valid Caffe net: {exc}")
    assert comparison.ok, "\n".join(comparison.problems)


# ------------------------------------------------------------------------------------------- the oracle vs Caffe


def _golden_folders() -> list[str]:
    if not GOLDEN.is_dir():
        return ["synthetic_missing"]
    names = [p.name for p in sorted(GOLDEN.glob("synthetic_*"))]
    return names + ["squeezenet_v1.1", "googlenet_cam", "googlenet_cam14", "mobilenet_v1", "mobilenet_v2"]


@pytest.mark.slow
@pytest.mark.parametrize("folder", _golden_folders())
def test_reference_matches_real_caffe(tmp_path, folder):
    if not GOLDEN.is_dir():
        pytest.skip(f"{GOLDEN} not present: the real-Caffe golden outputs live in ../shared")
    path = GOLDEN / folder
    if not (path / "weights.caffemodel").exists():
        if not (path / "weights.recipe.json").exists():
            pytest.skip(f"{path} has no weights")
        shutil.copytree(path, tmp_path / folder)
        shutil.copytree(GOLDEN / "tools", tmp_path / "tools")
        subprocess.run(
            [sys.executable, "tools/regen_weights.py", folder], cwd=tmp_path, check=True, capture_output=True
        )
        path = tmp_path / folder
    index_path = path / "blobs_index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"input_blob": "data", "blobs": {}}
    text = (path / "deploy.prototxt").read_text()
    model = read_caffemodel(path / "weights.caffemodel")
    weights = {name: [b.values.reshape(b.shape) for b in lw.blobs] for name, lw in model.layers.items()}
    ours = cr.forward(text, weights, {index["input_blob"]: np.load(path / "input.npy")})
    golden = np.load(path / "blobs.npz")
    assert golden.files
    for name in golden.files:
        source = index["blobs"].get(name, {}).get("alias_of", name)
        source = name if source == "input.npy" else source
        if source not in ours and "_split_" in source:  # Caffe's auto Split top: <blob>_<layer>_<i>_split_<n>
            source = max((b for b in ours if source.startswith(b + "_")), key=len)
        err = relative_error(golden[name], ours[source])
        assert golden[name].shape == ours[source].shape, name
        assert err <= 2e-5, f"{folder}: reference blob {name} differs from real Caffe: rel err {err:.3g}"
