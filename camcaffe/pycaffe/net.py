"""A pycaffe-compatible surface: a legacy script runs with only `import camcaffe as caffe` changed.

`Net(deploy, weights, TEST)` converts the deploy net once to ONNX and runs it with ONNX Runtime; after
`forward()` every blob in `net.blobs` reads as Caffe's would (in-place layers included: a blob holds its last
writer's value), fetched from ONNX Runtime only when read (lazy.py). Reshaping an input blob's batch keeps the converted model; changing
its other dimensions converts again on the next `forward()` / `reshape()`.

Where it deliberately differs from pycaffe:

* Inference only: `TRAIN` raises `PycaffeError`, a deploy net runs in TEST phase. `backward()` is Caffe's
  BackwardFromTo when the prototxt has `force_backward: true` or a top with a `loss_weight` (as in Caffe,
  else nothing is computed; the layers that run are those net.cpp picks, need_backward.py): every blob's diff as Caffe leaves it and parameter diffs added to (backward.py,
  param_grads.py); the blob values it differentiates at are recomputed from the inputs of the last forward
  that ran the first layers, and taken from the blobs a later forward(start=) read. Differences: parameters
  of layers without a numpy rule raise on `.diff`; a layer whose converted nodes use one blob a different
  number of times than it lists it as a bottom gives that blob's whole gradient to the first such bottom.
* `set_mode_gpu()` where CUDA is not usable (no GPU, or onnxruntime without CUDA) prints one warning on
  stderr and keeps running on the CPU, where a CPU-only pycaffe build would abort. The mode (and device)
  in force at each `forward()` chooses the execution provider, as Caffe's global mode does.
* `Net(deploy)` without weights uses seeded random parameters (`set_random_seed`), not the prototxt's fillers.
* Parameters: `net.params[layer][i].data` is a writable copy of Caffe's array (made on first access); a
  changed value takes effect from the next `forward()`, which converts again (net surgery works).
* The Split layers Caffe inserts for blobs read by several layers are listed in `net.layers` /
  `net._layer_names` and their tops in `net.blobs` exactly as Caffe names and places them (see splits.py);
  a Split top reads (and writes) its source blob's data memory and has a diff of its own, as in Caffe.
* `forward(start=, end=)` runs the layers of the range as a sub-net of their own (converted once per range
  and input shapes, then cached), fed with the current values of the blobs it reads from outside.
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import zip_longest

import numpy as np

from camcaffe import __version__
from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.caffemodel import read_caffemodel, write_caffemodel
from camcaffe.caffe.net import CaffeNet, load_net, net_from_param
from camcaffe.caffe.prototxt import parse_prototxt, read_prototxt_text
from camcaffe.convert.converter import ConvertedNet, ConvertOptions, ParamSource, convert_net
from camcaffe.convert.onnx_io import build_model
from camcaffe.convert.registry import is_supported, supported_types
from camcaffe.convert.weights import CaffemodelWeights, RandomWeights
from camcaffe.errors import CamcaffeError, WeightsError
from camcaffe.pycaffe.backward import BackwardModel, BlobVersions, build_backward, layer_records
from camcaffe.pycaffe.lazy import DeferredValues, held_elsewhere
from camcaffe.pycaffe.need_backward import backward_needs
from camcaffe.pycaffe.param_grads import NoParamGradient, has_rule
from camcaffe.pycaffe.param_grads import gradients as param_gradients
from camcaffe.pycaffe.splits import LayerEntry, blob_order, insert_splits, split_sources
from camcaffe.pycaffe.subnet import SubnetPlan, plan_range, subnet_param

TRAIN = 0
"""pycaffe's `caffe.TRAIN`; refused, since camcaffe runs deploy nets for inference."""
TEST = 1
"""pycaffe's `caffe.TEST`: the phase of deploy inference (the default)."""


def _held_diff(holder, shape: tuple[int, ...]) -> np.ndarray:
    """The diff array a blob or parameter holds, zeros of `shape` when it has none of that shape yet."""
    held = getattr(holder, "_diff", None)
    if held is None or held.shape != shape:
        held = holder._diff = np.zeros(shape, dtype=np.float32)
    return held


class PycaffeError(CamcaffeError, ValueError):
    """A pycaffe call camcaffe cannot honour (training, gradients, a misfit input or argument).

    It is also a ValueError, so scripts catching pycaffe's generic exceptions keep working."""


# ---------------------------------------------------------------------------------------------- mode


@dataclass
class _ModeState:
    gpu: bool = False  # pycaffe starts in CPU mode
    device: int = 0
    seed: int = 0
    warned_no_cuda: bool = False


_STATE = _ModeState()


def _warn(message: str) -> None:
    print(f"camcaffe: warning: {message}", file=sys.stderr)


def set_mode_cpu() -> None:
    """Run Nets on the CPU from their next forward() on."""
    _STATE.gpu = False


def set_mode_gpu() -> None:
    """Run Nets on CUDA from their next forward() on; without usable CUDA, warn once and stay on the CPU."""
    from camcaffe.runtime.session import cuda_usable

    if cuda_usable():
        _STATE.gpu = True
        return
    _STATE.gpu = False
    if not _STATE.warned_no_cuda:
        _STATE.warned_no_cuda = True
        _warn(
            "set_mode_gpu(): CUDA is not usable here (no GPU, or onnxruntime without CUDA 12/13 + cuDNN 9); "
            "running on the CPU"
        )


def set_device(device_id: int) -> None:
    """The CUDA device used in GPU mode (0 by default)."""
    if isinstance(device_id, bool) or not isinstance(device_id, (int, np.integer)) or device_id < 0:
        raise PycaffeError(f"set_device({device_id!r}): the device id must be a non-negative integer")
    _STATE.device = int(device_id)


def set_random_seed(seed: int) -> None:
    """Seed of the random parameters given to Nets created without weights (Caffe's fillers are not run,
    so otherwise harmless: a deploy net in TEST phase draws no random numbers)."""
    _STATE.seed = int(seed)


def init_log(level: int = 0, stderr: bool = False) -> None:
    """pycaffe's init_log (glog set-up): a no-op, camcaffe writes only warnings, on stderr."""


def log(message: str) -> None:
    """pycaffe's log: the message on stderr."""
    print(message, file=sys.stderr)


def layer_type_list() -> list[str]:
    """pycaffe's layer_type_list: the layer types a Net can run here (those camcaffe converts, with Input and
    the Split layers Caffe inserts), sorted as Caffe's registry lists them."""
    return sorted({*supported_types(), "Input", "Split"})


def _mode_key() -> tuple[bool, int]:
    return (True, _STATE.device) if _STATE.gpu else (False, 0)


# --------------------------------------------------------------------------------------------- blobs


def _dims(shape: Sequence, what: str) -> tuple[int, ...]:
    """reshape(1, 3, 224, 224) or reshape((1, 3, 224, 224)) -> a tuple of positive ints."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise PycaffeError(f"{what}.reshape{tuple(shape)}: dimensions must be integers") from None
    if not dims or any(d <= 0 for d in dims):
        raise PycaffeError(f"{what}.reshape{dims}: give one or more positive dimensions")
    return dims


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class Blob:
    """A Caffe blob: `.data` is the float32 array (N, C, H, W) that forward() reads (inputs) and fills;
    `.diff` its gradient, filled by backward() (and by scripts, for the tops backward starts from)."""

    # Flatten / Reshape tops share their bottom's diff memory in Caffe (ShareDiff): set to the bottom's blob
    _diff_owner: Blob | None = None

    def __init__(self, name: str, shape: Sequence[int]):
        self.name = name
        self._data = np.zeros(tuple(shape), dtype=np.float32)
        self._pending: DeferredValues | None = None  # a forward's value not fetched yet (lazy.py)

    @property
    def data(self) -> np.ndarray:
        if self._pending is not None:
            self._pending.resolve(self.name)
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    def _peek(self) -> np.ndarray:
        """The array, without fetching a pending value (for its shape)."""
        return self._data

    def _defer(self, deferred: DeferredValues, shape: tuple[int, ...]) -> None:
        self._pending = deferred
        if self._data.shape != shape:
            self._data = np.zeros(shape, dtype=np.float32)

    def _held_elsewhere(self) -> bool:
        return held_elsewhere(self._data)

    @property
    def diff(self) -> np.ndarray:
        """The blob's gradient: written by scripts (top diffs), computed by backward()."""
        shape = self.shape
        owner = self._diff_owner
        if owner is not None:
            shared = owner.diff
            if shared.size == int(np.prod(shape, dtype=np.int64)):
                return shared.reshape(shape)
        return _held_diff(self, shape)

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._peek().shape)

    @property
    def count(self) -> int:
        return int(self._peek().size)

    def _legacy_dim(self, axis: int) -> int:
        shape = self.shape
        return shape[axis] if axis < len(shape) else 1

    @property
    def num(self) -> int:
        return self._legacy_dim(0)

    @property
    def channels(self) -> int:
        return self._legacy_dim(1)

    @property
    def height(self) -> int:
        return self._legacy_dim(2)

    @property
    def width(self) -> int:
        return self._legacy_dim(3)

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob::Reshape: the first values survive when the blob does not grow, else zeros."""
        dims = _dims(shape, f"blob '{self.name}'")
        old = self.data
        if dims == old.shape:
            return
        new = np.zeros(dims, dtype=np.float32)
        if new.size <= old.size:
            new.reshape(-1)[:] = old.reshape(-1)[: new.size]
        self._set(new)

    def _set(self, array: np.ndarray) -> None:
        self._data = array

    def _store(self, value: np.ndarray) -> None:
        """Write a forward result, in place when the shape is unchanged (held references stay live)."""
        self._pending = None
        if value.shape == self._data.shape:
            np.copyto(self._data, value, casting="unsafe")
        else:
            self._data = np.array(value, dtype=np.float32, copy=True)

    def __repr__(self) -> str:
        return f"<Blob '{self.name}' {self.shape}>"


class SplitBlob(Blob):
    """A top of an inserted Split layer: Caffe shares its bottom's data memory, so it reads and writes the
    source blob's array; its diff is its own (backward sums the Split tops' diffs into the source's)."""

    def __init__(self, name: str, source: Blob):
        self.name = name
        self.source = source

    @property
    def data(self) -> np.ndarray:
        return self.source.data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.source.data[...] = value

    def reshape(self, *shape: int) -> None:
        self.source.reshape(*shape)

    def _peek(self) -> np.ndarray:
        return self.source._peek()

    def _set(self, array: np.ndarray) -> None:
        self.source._set(array)

    def _store(self, value: np.ndarray) -> None:
        self.source._store(value)

    def __repr__(self) -> str:
        return f"<SplitBlob '{self.name}' of '{self.source.name}' {self.shape}>"


class ParamBlob(Blob):
    """A layer parameter blob holding Caffe's array (e.g. InnerProduct (num_output, K), BatchNorm's raw
    mean / variance / scale factor). `.data` is a writable copy made on first access; the net compares it
    with the value it was converted with at each forward() and converts again when it changed."""

    def __init__(self, name: str, array: np.ndarray):
        self.name = name
        self._baseline = _read_only(np.asarray(array, dtype=np.float32))
        self._data: np.ndarray | None = None  # type: ignore[assignment]
        self.no_gradient: str | None = None  # why backward() does not compute this diff, if it does not

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.array(self._baseline, dtype=np.float32, copy=True)
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.current().shape)

    @property
    def diff(self) -> np.ndarray:
        """The parameter's gradient: backward() adds to it, as Caffe does (clear_param_diffs() zeroes it)."""
        if self.no_gradient is not None:
            raise PycaffeError(f"parameter '{self.name}': no .diff: {self.no_gradient}")
        shape = self.shape
        return _held_diff(self, shape)

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self.diff[...] = value

    @property
    def count(self) -> int:
        return int(self.current().size)

    def current(self) -> np.ndarray:
        """The value to convert with: the edited copy when there is one, else the original array."""
        return self._data if self._data is not None else self._baseline

    def changed(self) -> bool:
        data = self._data
        if data is None:
            return False
        return data.shape != self._baseline.shape or not np.array_equal(data, self._baseline)

    def commit(self) -> None:
        """The current value is now the one the converted model holds."""
        if self._data is not None:
            self._baseline = _read_only(self._data.copy())

    def replace(self, array: np.ndarray) -> None:
        """New values (copy_from): written into the held copy so references to `.data` see them."""
        array = np.asarray(array, dtype=np.float32)
        if self._data is not None and self._data.shape == array.shape:
            np.copyto(self._data, array)
            self._baseline = _read_only(self._data.copy())
        else:
            self._data = None
            self._baseline = _read_only(array)

    def __repr__(self) -> str:
        return f"<ParamBlob '{self.name}' {self.shape}>"


@dataclass
class Layer:
    """pycaffe's `net.layers[i]` / `net.layer_dict[name]`: the layer type and its parameter blobs."""

    name: str
    type: str
    blobs: list[ParamBlob] = field(default_factory=list)


# ------------------------------------------------------------------------------------ conversion


@dataclass
class _RecordingSource:
    """Wraps a parameter source and keeps, per layer, the arrays it handed to the converter."""

    source: ParamSource
    record: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __call__(self, layer: caffe_pb2.LayerParameter, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        arrays = self.source(layer, expected)
        self.record[layer.name] = arrays
        return arrays


@dataclass
class _Compiled:
    """One conversion of the net for given input shapes, with its ONNX Runtime session (made lazily)."""

    converted: ConvertedNet
    model: object  # onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]]
    session: object = None
    session_key: tuple[bool, int] | None = None
    # the sets of tensors fetched so far: ONNX Runtime keeps one session per set (see fetch_list)
    fetch_sets: set[frozenset[str]] = field(default_factory=set)
    # backward models by (first layer, last layer, seeded blobs)
    gradients: dict[tuple, BackwardModel] = field(default_factory=dict)

    def all_tensors(self) -> list[str]:
        return list(dict.fromkeys(self.converted.blob_tensors.values()))

    def fetch_list(self, tensors: list[str]) -> list[str]:
        """The tensors to ask for: these, or every blob once three other sets have sessions (bounded)."""
        key = frozenset(tensors)
        if key not in self.fetch_sets and len(self.fetch_sets) >= 3:
            return self.all_tensors()
        self.fetch_sets.add(key)
        return tensors

    def fits(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        if self.converted.symbolic_batch:
            return all(shapes[n][1:] == s[1:] for n, s in self.input_shapes.items())
        return shapes == self.input_shapes

    def blob_shape(self, blob: str, batch: int) -> tuple[int, ...]:
        tensor = self.converted.blob_tensors[blob]
        shape = list(self.converted.tensor_shapes[tensor])
        if self.converted.symbolic_batch and tensor in self.converted.batch_led:
            shape[0] = batch
        return tuple(shape)


def _shares_diff(entry: LayerEntry) -> bool:
    """Layers whose top shares its bottom's diff memory in Caffe (ShareDiff in their Reshape)."""
    if entry.param is None or not entry.bottoms:
        return False
    return entry.type in ("Flatten", "Reshape") or (
        (entry.type == "Concat" and len(entry.bottoms) == 1)
        or (entry.type == "Slice" and len(entry.tops) == 1)
    )


def _load_caffe_net(path: str | os.PathLike, stages: Sequence[str] | None) -> CaffeNet:
    if not stages:
        return load_net(path, is_supported)
    param = parse_prototxt(read_prototxt_text(path), str(path), is_supported)
    param.state.stage.extend(str(s) for s in stages)
    return net_from_param(param, str(path))


def _net_arguments(args: tuple, phase, weights, level, stages) -> tuple:
    """pycaffe's signatures: Net(file, phase, level=0, stages=None, weights=None) and the deprecated
    Net(file, weights, phase); the phase may be omitted here (TEST)."""
    rest = list(args)
    if rest and isinstance(rest[0], (str, bytes, os.PathLike)):
        if weights is not None:
            raise PycaffeError("Net(): weights given both positionally and as weights=")
        weights = rest.pop(0)
    if len(rest) > 3:
        raise PycaffeError(f"Net(): too many positional arguments {tuple(args)!r}")
    chosen = {"phase": phase, "level": level, "stages": stages}
    for name, value in zip(("phase", "level", "stages"), rest, strict=False):
        if name == "phase" and phase is not None:
            raise PycaffeError("Net(): phase given both positionally and as phase=")
        chosen[name] = value
    return weights, TEST if chosen["phase"] is None else chosen["phase"], chosen["level"], chosen["stages"]


def _check_phase(phase) -> None:
    if isinstance(phase, bool) or phase not in (TRAIN, TEST):
        raise PycaffeError(f"Net(): phase must be caffe.TEST (or caffe.TRAIN), got {phase!r}")
    if phase == TRAIN:
        raise PycaffeError(
            "Net(..., caffe.TRAIN): camcaffe runs deploy nets for inference only; use caffe.TEST"
        )


# ----------------------------------------------------------------------------------------------- net


class Net:
    """pycaffe's `caffe.Net` for deploy inference: `Net(deploy, weights, caffe.TEST)`,
    `Net(deploy, caffe.TEST, weights=...)` or `Net(deploy, weights)`."""

    def __init__(
        self, network_file: str | os.PathLike, *args, phase=None, weights=None, level=0, stages=None
    ):
        weights, phase, level, stages = _net_arguments(args, phase, weights, level, stages)
        _check_phase(phase)
        if level != 0:
            raise PycaffeError(f"Net(level={level!r}): only level 0 is supported")
        self._source = str(network_file)
        self._caffe_net = _load_caffe_net(network_file, stages)
        self._force_backward = parse_prototxt(
            read_prototxt_text(network_file), str(network_file), is_supported
        ).force_backward
        self._forward_inputs: dict[str, np.ndarray] = {}  # the inputs of the last full forward (backward)
        # blobs a forward(start=) read from memory (scripts may have set them): backward differentiates there
        self._forward_fed: tuple[int, dict[str, np.ndarray]] = (0, {})
        self.inputs = [t for lay in self._caffe_net.layers if lay.type == "Input" for t in lay.top]
        self.outputs = list(self._caffe_net.outputs)
        self._conversions = 0
        self._stale = False
        # forward(start=/end=) ranges: (first, last, fed shapes) -> the converted part of the net
        self._subnets: dict[tuple, tuple[SubnetPlan, _Compiled]] = {}
        # backward(start=) ranges: (layers kept, input shapes) -> the net converted up to that layer
        self._prefixes: dict[tuple, _Compiled] = {}
        # blobs a script read after a forward: fetched with the outputs from then on (lazy.py)
        self._read_lazily: set[str] = set()
        self._compiled = self._initial_conversion(weights)
        batch = self._compiled.converted.inputs[0][1][0] if self._compiled.converted.inputs else 1
        aliases = split_sources(self._table)
        self.blobs: OrderedDict[str, Blob] = OrderedDict()
        for name in blob_order(self._table):
            source = aliases.get(name)
            self.blobs[name] = (
                SplitBlob(name, self.blobs[source])
                if source is not None
                else Blob(name, self._compiled.blob_shape(name, batch))
            )
        for entry in self._table:
            if _shares_diff(entry):
                for top in entry.tops:
                    if top != entry.bottoms[0]:
                        self.blobs[top]._diff_owner = self.blobs[entry.bottoms[0]]
        for layer_name, blobs in self.params.items():
            layer_type = self._caffe_net.layer(layer_name).type
            if not has_rule(layer_type):
                for blob in blobs:
                    blob.no_gradient = f"camcaffe has no parameter gradient rule for {layer_type} layers"
        counts = {name: len(blobs) for name, blobs in self.params.items()}
        self._needs = backward_needs(self._table, counts, self._force_backward)
        for blob_name, weight in self._needs.loss_diffs.items():  # Layer::SetLossWeights
            self.blobs[blob_name].diff[...] = weight

    # -- structure (Caffe's runtime tables, inserted Split layers included)

    @property
    def _table(self) -> list[LayerEntry]:
        table = getattr(self, "_table_cache", None)
        if table is None:
            table = self._table_cache = insert_splits(self._caffe_net.layers)
        return table

    @property
    def _layer_names(self) -> list[str]:
        return [entry.name for entry in self._table]

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def layers(self) -> list[Layer]:
        return [Layer(entry.name, entry.type, self.params.get(entry.name, [])) for entry in self._table]

    @property
    def layer_dict(self) -> OrderedDict[str, Layer]:
        return OrderedDict((layer.name, layer) for layer in self.layers)

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((entry.name, list(entry.tops)) for entry in self._table)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((entry.name, list(entry.bottoms)) for entry in self._table)

    # -- conversion

    def _initial_conversion(self, weights) -> _Compiled:
        if weights is None:
            recorder = _RecordingSource(RandomWeights(seed=_STATE.seed))
            compiled = self._convert(recorder, None)
        else:
            caffemodel = CaffemodelWeights(read_caffemodel(weights))
            recorder = _RecordingSource(caffemodel)
            compiled = self._convert(recorder, None)
            caffemodel.check_complete(self._source)
            for message in caffemodel.warnings:
                _warn(message)
        self.params: OrderedDict[str, list[ParamBlob]] = OrderedDict(
            (
                layer.name,
                [ParamBlob(f"{layer.name}[{i}]", a) for i, a in enumerate(recorder.record[layer.name])],
            )
            for layer in self._caffe_net.layers
            if recorder.record.get(layer.name)
        )
        return compiled

    def _current_params(self, layer: caffe_pb2.LayerParameter, expected: list[tuple[int, ...]]) -> list:
        arrays = [blob.current() for blob in self.params.get(layer.name, [])]
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != [tuple(e) for e in expected]:
            raise WeightsError(
                f"{self._source}: layer '{layer.name}' has parameter shapes {shapes} but the net now needs "
                f"{[tuple(e) for e in expected]}; check the input shape and any reshaped parameter"
            )
        return arrays

    def _convert(
        self, source: ParamSource, shapes: dict[str, tuple[int, ...]] | None, net: CaffeNet | None = None
    ) -> _Compiled:
        """Convert for the given input shapes (None: as declared). A net whose layers bake the batch in
        (no symbolic batch) is converted for the exact batch of the inputs."""
        overrides = {n: list(s) for n, s in shapes.items()} if shapes else None
        fixed = overrides is not None and not self._compiled.converted.symbolic_batch
        batch = next(iter(overrides.values()))[0] if fixed and overrides else None
        options = ConvertOptions(batch=batch, input_shapes=overrides)
        converted = convert_net(net or self._caffe_net, source, options)
        # pycaffe converts again when the batch changes, so the deploy batch is no limitation here
        converted.warnings = [w for w in converted.warnings if "keeps the deploy batch" not in w]
        for message in converted.warnings:
            _warn(message)
        self._conversions += 1
        metadata = {"camcaffe.version": __version__, "camcaffe.blobs": json.dumps(converted.blob_tensors)}
        model = build_model(converted, metadata, with_initializers=True)
        input_shapes = {name: tuple(shape) for name, shape in converted.inputs}
        return _Compiled(converted, model, input_shapes)

    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.blobs[name].shape for name in self.inputs}

    def _sync_params(self) -> None:
        """Parameters edited since the last conversion make every converted model stale."""
        changed = [blob for blobs in self.params.values() for blob in blobs if blob.changed()]
        for blob in changed:
            blob.commit()
        if changed:
            self._stale = True
            self._subnets.clear()
            self._prefixes.clear()

    def _prepare(self) -> _Compiled:
        """Convert again when an input's non-batch shape (or a fixed batch) or a parameter changed."""
        self._sync_params()
        shapes = self._input_shapes()
        if self._stale or not self._compiled.fits(shapes):
            self._compiled = self._convert(self._current_params, shapes)
            self._stale = False
        return self._compiled

    def _prepare_range(self, first: int, last: int) -> tuple[SubnetPlan, _Compiled]:
        """The converted part of the net for table entries first..last, fed with the blobs' current shapes."""
        self._sync_params()
        plan = plan_range(self._table, first, last)
        key = (first, last, tuple(self.blobs[name].shape for name in plan.feeds))
        held = self._subnets.get(key)
        if held is None:
            param = subnet_param(plan, lambda blob: self.blobs[blob].shape, self._caffe_net.name)
            sub = net_from_param(param, self._source)
            converted = convert_net(sub, self._current_params, ConvertOptions())
            self._conversions += 1
            for message in converted.warnings:
                if "keeps the deploy batch" not in message:
                    _warn(message)
            metadata = {"camcaffe.version": __version__, "camcaffe.blobs": json.dumps(converted.blob_tensors)}
            model = build_model(converted, metadata, with_initializers=True)
            compiled = _Compiled(converted, model, {n: tuple(s) for n, s in converted.inputs})
            held = self._subnets[key] = (plan, compiled)
        return held

    def _prepare_prefix(self, count: int) -> _Compiled:
        """The net's first `count` layers converted for the current input shapes: Caffe's BackwardFromTo
        touches (and reshapes) only the layers of its range, so layers above it must not be converted (a
        deep-dream octave feeds inputs smaller than the later layers accept)."""
        self._sync_params()
        shapes = self._input_shapes()
        key = (count, tuple(shapes.items()))
        compiled = self._prefixes.get(key)
        if compiled is None:
            layers = self._caffe_net.layers[:count]
            prefix = replace(self._caffe_net, layers=layers, outputs=list(layers[-1].top))
            compiled = self._prefixes[key] = self._convert(self._current_params, shapes, prefix)
        return compiled

    def reshape(self) -> None:
        """Propagate the input blobs' shapes to every other blob (converting again if needed)."""
        compiled = self._prepare()
        batch = self.blobs[self.inputs[0]].num if self.inputs else 1
        for name, blob in self.blobs.items():
            if name not in self.inputs and not isinstance(blob, SplitBlob):
                blob.reshape(*compiled.blob_shape(name, batch))

    # -- running

    def _session(self, compiled: _Compiled):
        key = _mode_key()
        if compiled.session is None or compiled.session_key != key:
            from camcaffe.runtime.session import CPU, CUDA, ModelSession

            session = ModelSession(compiled.model, provider="cuda" if key[0] else "cpu", source=self._source)
            if key[0]:
                session.providers = [(CUDA, {"device_id": str(key[1])}), CPU]
            compiled.session, compiled.session_key = session, key
        return compiled.session

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider the next forward() runs on."""
        return self._session(self._prepare()).provider_used

    def _run(
        self, compiled: _Compiled, feeds: dict[str, np.ndarray], tensors: Sequence[str]
    ) -> dict[str, np.ndarray]:
        session = self._session(compiled)
        try:
            return session.run(feeds, tensors)
        except CamcaffeError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            provider = "CUDA" if compiled.session_key and compiled.session_key[0] else "CPU"
            raise CamcaffeError(f"{self._source}: ONNX Runtime failed on {provider}: {detail}") from None

    def _set_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        for name, value in inputs.items():
            if name not in self.inputs:
                raise PycaffeError(
                    f"forward({name}=...): '{name}' is not an input blob; inputs: {self.inputs}"
                )
            array, blob = np.asarray(value), self.blobs[name]
            if array.ndim == 0 or array.shape[0] != blob.num:
                raise PycaffeError(
                    f"forward({name}=...): input of shape {array.shape} is not batch sized ({blob.num}); "
                    f"call net.blobs['{name}'].reshape(...) first"
                )
            try:
                blob.data[...] = array
            except ValueError:
                raise PycaffeError(
                    f"forward({name}=...): shape {array.shape} does not fit blob shape {blob.shape}; "
                    f"call net.blobs['{name}'].reshape(*x.shape) first"
                ) from None

    def _layer_index(self, what: str, name: str | None, default: int) -> int:
        if name is None:
            return default
        names = self._layer_names
        if name not in names:
            raise PycaffeError(
                f"forward({what}='{name}'): the net has no layer of that name; see net._layer_names"
            )
        return names.index(name)

    def forward(
        self,
        blobs: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Run layers `start`..`end` (default: all) as Caffe's ForwardFromTo: layers before `start` do not
        run and the blobs they write keep their current values (which the range then reads); layers after
        `end` do not run. Keyword arguments fill input blobs first.

        Returns {blob: net.blobs[blob].data} for the net's outputs (the tops of `end` when given) and any
        extra `blobs`."""
        for name in blobs or []:
            if name not in self.blobs:
                raise PycaffeError(f"forward(blobs=[...'{name}']): the net has no blob of that name")
        table = self._table
        first = self._layer_index("start", start, 0)
        last = self._layer_index("end", end, len(table) - 1)
        if first > last:
            raise PycaffeError(
                f"forward(start='{start}', end='{end}'): start comes after end in net._layer_names"
            )
        self._set_inputs(kwargs)
        outputs = list(table[last].tops if end is not None else self.outputs)
        real = [i for i, entry in enumerate(table) if entry.param is not None and entry.type != "Input"]
        if real and first <= real[0] and last >= real[-1]:
            compiled, fed = self._prepare(), list(self.inputs)
            written: list[str] = [
                top for layer in self._caffe_net.layers if layer.type != "Input" for top in layer.top
            ]
        elif any(first <= i <= last for i in real):
            plan, compiled = self._prepare_range(first, last)
            fed, written = list(plan.feeds), list(plan.written)
        else:
            fed, written = [], []
        if written:
            self._fill(compiled, fed, list(dict.fromkeys(written)), [*outputs, *(blobs or [])])
        if self._needs.any:
            starts_inside = bool(real) and first > real[0]
            if not starts_inside:  # layers below a start= keep the values of the forward that ran them
                self._forward_inputs = {name: self.blobs[name].data.copy() for name in self.inputs}
            self._forward_fed = (
                (first, {name: self.blobs[name].data.copy() for name in fed if name not in self.inputs})
                if starts_inside and fed
                else (0, {})
            )
        return {name: self.blobs[name].data for name in dict.fromkeys([*outputs, *(blobs or [])])}

    def _fill(self, compiled: _Compiled, fed: list[str], written: list[str], returned: list[str]) -> None:
        """Store the blobs a forward wrote: fetch those surely read now, leave the others pending (lazy.py)."""
        feeds = {name: np.ascontiguousarray(self.blobs[name].data, dtype=np.float32) for name in fed}
        tensors = compiled.converted.blob_tensors
        sources = {name: getattr(self.blobs[name], "source", self.blobs[name]).name for name in returned}
        wanted = {*sources.values(), *self._read_lazily}
        eager = [n for n in written if n in wanted or self.blobs[n]._held_elsewhere()]
        deferred = [n for n in written if n not in set(eager)]
        wanted_tensors = list(dict.fromkeys(tensors[n] for n in eager))
        values = self._run(compiled, feeds, compiled.fetch_list(wanted_tensors)) if wanted_tensors else {}
        # the inputs as this forward saw them (a range may write a blob it was fed, in place)
        snapshot = {name: np.array(array, copy=True) for name, array in feeds.items()} if deferred else {}
        for name in eager:
            self.blobs[name]._store(values[tensors[name]])
        if not deferred:
            return
        pending = DeferredValues(
            lambda names: self._run(compiled, snapshot, compiled.fetch_list(compiled.all_tensors())),
            {name: tensors[name] for name in deferred},
            {name: self.blobs[name] for name in deferred},
            self._read_lazily.add,
        )
        batch_shapes = {name: values[tensors[name]].shape for name in eager}
        for name in deferred:
            shape = batch_shapes.get(name) or self._written_shape(compiled, name, feeds)
            self.blobs[name]._defer(pending, shape)

    def _written_shape(self, compiled: _Compiled, name: str, feeds: dict[str, np.ndarray]) -> tuple[int, ...]:
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        return compiled.blob_shape(name, batch)

    def _batches(self, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
        total = len(next(iter(arrays.values())))
        size = self.blobs[self.inputs[0]].num
        for begin in range(0, total, size):
            batch = {name: a[begin : begin + size] for name, a in arrays.items()}
            pad = size - len(next(iter(batch.values())))
            if pad:
                batch = {
                    n: np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) for n, a in batch.items()
                }
            yield batch

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """pycaffe's forward_all: run the inputs through in batches of the input blob's batch size (the last
        batch padded with zeros, the padding's outputs dropped); returns copies of the outputs (and `blobs`),
        concatenated."""
        if not kwargs:
            return {name: value.copy() for name, value in self.forward(blobs).items()}
        collected: dict[str, list[np.ndarray]] = {}
        for batch in self._batches(kwargs):
            for name, value in self.forward(blobs, **batch).items():
                collected.setdefault(name, []).append(value.copy())
        total = len(next(iter(kwargs.values())))
        return {name: np.concatenate(parts)[:total] for name, parts in collected.items()}

    def backward(
        self,
        diffs: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Caffe's BackwardFromTo(start, end): layers `start` (default: the last) down to `end` (default: the
        first) run backward, in that order, on the blobs' diffs. A layer reads its tops' current diffs (those
        the layers above it wrote in this pass, else what the blob holds: keyword arguments set the outputs'
        diffs first) and writes its bottoms' diffs; parameter diffs are added to. The blob values are those
        of the model of the last forward. Computed when the prototxt has `force_backward: true` (else, as in
        Caffe for a net without loss, nothing is).

        Returns {blob: diff} for the input blobs (or blob `end`) and `diffs`."""
        table = self._table
        names = self._layer_names
        for what, name in (("start", start), ("end", end)):
            if name is not None and name not in names:
                raise PycaffeError(f"backward({what}='{name}'): the net has no layer of that name")
        first = names.index(end) if end is not None else 0
        last = names.index(start) if start is not None else len(table) - 1
        if first > last:
            raise PycaffeError(
                f"backward(start='{start}', end='{end}'): end comes after start in net._layer_names"
            )
        for name in diffs or []:
            if name not in self.blobs:
                raise PycaffeError(f"backward(diffs=['{name}']): the net has no blob of that name")
        for name, value in kwargs.items():
            if name not in self.outputs:
                raise PycaffeError(
                    f"backward({name}=...): '{name}' is not an output blob; outputs: {self.outputs}"
                )
            if np.shape(value)[:1] != self.blobs[name].shape[:1]:
                raise PycaffeError(
                    f"backward({name}=...): diff of shape {np.shape(value)} is not batch sized ({self.blobs[name].num})"
                )
            self.blobs[name].diff[...] = value
        if end is None:
            returned = list(self.inputs)
        else:  # pycaffe returns the blob named like the end layer (a layer usually names its top after itself)
            returned = [end] if end in self.blobs else list(table[first].bottoms)
        returned = list(dict.fromkeys([*returned, *(diffs or [])]))
        if self._needs.any:
            self._backward_range(first, last)
        return {name: self.blobs[name].diff for name in returned}

    def _backward_range(self, first: int, last: int) -> None:
        table = self._table
        inputs = self._forward_inputs or {name: self.blobs[name].data.copy() for name in self.inputs}
        reshaped = [name for name, value in inputs.items() if value.shape != self.blobs[name].shape]
        if reshaped:  # Caffe would run on stale blob memory; the blob values here are the last forward's
            raise PycaffeError(
                f"backward(): input blob '{reshaped[0]}' was reshaped to {self.blobs[reshaped[0]].shape} since "
                f"the last forward (of shape {inputs[reshaped[0]].shape}); call net.forward() first"
            )
        real = [i for i, entry in enumerate(table) if entry.param is not None and entry.type != "Input"]
        if real and real[0] <= last < real[-1]:  # only the layers up to the range's top one
            kept = table[: last + 1]
            compiled = self._prepare_prefix(sum(entry.param is not None for entry in kept))
            records = layer_records(kept, compiled.converted.layers)
        else:
            compiled = self._prepare()  # the net for the current input shapes and parameters
            records = layer_records(table, compiled.converted.layers)
        needs = self._needs
        versions = BlobVersions(table, lambda i, j: (i, j) in needs.bottoms)
        seeded = frozenset(blob for blob in versions.range_seeds(first, last) if self.blobs[blob].diff.any())
        fed_at, fed_values = self._forward_fed
        fed = {}
        for blob, value in fed_values.items():
            try:
                fed[versions.tensor_before(fed_at, blob, records)] = value
            except KeyError:  # a write above the range (not converted): no layer of the range reads it
                continue
        with_params = {
            i
            for i in range(first, last + 1)
            if i in needs.layers
            and table[i].param is not None
            and any(blob.no_gradient is None for blob in self.params.get(table[i].name, []))
        }
        key = (first, last, seeded, frozenset(fed))
        model = compiled.gradients.get(key)
        if model is None:
            model = compiled.gradients[key] = build_backward(
                compiled.model,
                table,
                records,
                first,
                last,
                seeded.__contains__,
                with_params,
                self._source,
                list(fed),
                versions.flows,
            )
        tensors = compiled.converted.blob_tensors
        feeds = {tensors[name]: value for name, value in inputs.items() if tensors[name] in model.inputs}
        feeds.update({model.seeds[blob]: self.blobs[blob].diff.copy() for blob in model.seeds})
        feeds.update({model.fed[tensor]: value for tensor, value in fed.items() if tensor in model.fed})
        results = model.run("cuda" if _mode_key()[0] else "cpu", self._source, feeds)
        for i in range(last, first - 1, -1):  # Caffe's order: each layer reads what the ones above wrote
            entry = table[i]
            if i not in needs.layers:
                continue
            if entry.param is None:  # an inserted Split: the sum of its tops' diffs
                total = self.blobs[entry.tops[0]].diff.copy()
                for top in entry.tops[1:]:
                    total += self.blobs[top].diff
                self.blobs[entry.bottoms[0]].diff[...] = total
                continue
            if entry.type == "Input":
                continue
            if i in with_params:
                values = [results[model.values[(i, j)]] for j in range(len(entry.bottoms))]
                self._add_param_diffs(entry, values)
            for j, blob in enumerate(entry.bottoms):
                if not versions.passes(i, j):
                    continue
                output = model.slot_gradients.get((i, j))
                target = self.blobs[blob].diff
                if output is None:
                    target[...] = 0
                else:
                    target[...] = results[output].reshape(target.shape)

    def _add_param_diffs(self, entry: LayerEntry, bottoms: list[np.ndarray]) -> None:
        blobs = self.params[entry.name]
        top_diffs = [self.blobs[top].diff for top in entry.tops]
        try:
            found = param_gradients(entry.param, bottoms, top_diffs, [blob.current() for blob in blobs])
        except NoParamGradient as why:
            for blob in blobs:
                blob.no_gradient = f"layer '{entry.name}' ({entry.type}) {why}"
            return
        specs = entry.param.param if entry.param is not None else []
        for k, (blob, gradient) in enumerate(zip(blobs, found, strict=False)):
            if gradient.value is None or (k < len(specs) and specs[k].lr_mult == 0):
                continue  # lr_mult 0: Caffe's param_propagate_down is off, the diff is left as it is
            if gradient.accumulate:
                blob.diff[...] += gradient.value.reshape(blob.diff.shape)
            else:
                blob.diff[...] = gradient.value.reshape(blob.diff.shape)

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff (Caffe's Net::ClearParamDiffs, which solvers call between iterations:
        backward() adds parameter gradients to the diffs)."""
        for blobs in self.params.values():
            for blob in blobs:
                if blob.no_gradient is None:
                    blob.diff[...] = 0

    def forward_backward_all(
        self, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None, **kwargs: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """pycaffe's forward_backward_all: input arrays (keyword arguments named after input blobs) and
        output diffs (named after output blobs) in batches of the input blob's batch size, the last one
        padded with zeros; forward then backward per batch. Returns ({output or `blobs`: values},
        {input or `diffs`: diffs}), concatenated, the padding dropped."""
        unknown = [name for name in kwargs if name not in self.inputs and name not in self.outputs]
        if unknown:
            raise PycaffeError(
                f"forward_backward_all({unknown[0]}=...): not an input or output blob; inputs: {self.inputs}, "
                f"outputs: {self.outputs}"
            )
        forward_in = {name: kwargs[name] for name in self.inputs if name in kwargs}
        backward_in = {name: kwargs[name] for name in self.outputs if name in kwargs}
        forward_batches = list(self._batches(forward_in)) if forward_in else []
        backward_batches = list(self._batches(backward_in)) if backward_in else []
        outs: dict[str, list[np.ndarray]] = {}
        grads: dict[str, list[np.ndarray]] = {}
        for forward_batch, backward_batch in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, value in self.forward(blobs, **forward_batch).items():
                outs.setdefault(name, []).append(value.copy())
            for name, value in self.backward(diffs, **backward_batch).items():
                grads.setdefault(name, []).append(value.copy())
        total = len(next(iter(kwargs.values()))) if kwargs else None
        return (
            {name: np.concatenate(parts)[:total] for name, parts in outs.items()},
            {name: np.concatenate(parts)[:total] for name, parts in grads.items()},
        )

    # -- weights

    def copy_from(self, weights: str | os.PathLike) -> None:
        """Load parameters from a caffemodel, layer by name; layers it lacks keep their values (as Caffe)."""
        source = CaffemodelWeights(read_caffemodel(weights))
        for name, blobs in self.params.items():
            held = source.weights.get(name)
            if held is None or not held.blobs:
                continue
            arrays = source(self._caffe_net.layer(name), [blob.shape for blob in blobs])
            for blob, array in zip(blobs, arrays, strict=True):
                blob.replace(array)
        if not source.used:
            raise WeightsError(f"{weights}: has weights for none of the layers of {self._source}")
        self._stale = True
        self._subnets.clear()
        self._prefixes.clear()

    def save(self, filename: str | os.PathLike) -> None:
        """Write the current parameters as a caffemodel."""
        layers = [
            (layer.name, layer.type, [blob.current() for blob in self.params.get(layer.name, [])])
            for layer in self._caffe_net.layers
        ]
        write_caffemodel(filename, layers)

    def __repr__(self) -> str:
        return f"<camcaffe Net '{self._caffe_net.name}' inputs={self.inputs} outputs={self.outputs}>"


__all__ = [
    "TEST",
    "TRAIN",
    "Blob",
    "Layer",
    "Net",
    "ParamBlob",
    "PycaffeError",
    "SplitBlob",
    "init_log",
    "layer_type_list",
    "log",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_random_seed",
]
