"""ONNX Runtime sessions: provider choice (CUDA when usable, else CPU), a session cache, and any
tensor of the model (e.g. a Caffe blob) fetched by name, added as an output on demand."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from camcaffe.errors import CamcaffeError, OnnxModelError
from camcaffe.runtime import onnx_lite_pb2 as lite

if TYPE_CHECKING:
    import onnx

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_PROBE_LOCK = threading.Lock()
_CUDA_USABLE: bool | None = None


def _ort():
    import onnxruntime

    return onnxruntime


@contextlib.contextmanager
def _quiet_logs():
    """onnxruntime prints a wall of errors when CUDA libraries are missing; keep the probe silent."""
    ort = _ort()
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(3)


def cuda_usable() -> bool:
    """Whether a session can really run on the CUDA EP here (probed once, quietly)."""
    global _CUDA_USABLE
    with _PROBE_LOCK:
        if _CUDA_USABLE is None:
            _CUDA_USABLE = _probe_cuda()
        return _CUDA_USABLE


def _probe_cuda() -> bool:
    ort = _ort()
    if CUDA not in ort.get_available_providers():
        return False
    with _quiet_logs():
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            with (
                contextlib.suppress(Exception),
                open(os.devnull, "w") as sink,
                contextlib.redirect_stdout(sink),
            ):
                preload()
        model = lite.ModelProto(ir_version=8, opset_import=[lite.OperatorSetIdProto(domain="", version=17)])
        model.graph.name = "probe"
        model.graph.node.add(op_type="Relu", input=["x"], output=["y"])
        for name, values in (("x", model.graph.input), ("y", model.graph.output)):
            value = values.add(name=name)
            value.type.tensor_type.elem_type = 1  # FLOAT
            value.type.tensor_type.shape.dim.add(dim_value=1)
        try:
            session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, CPU])
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            return False
        return CUDA in session.get_providers()


def choose_providers(preference: str = "auto") -> list[str]:
    if preference not in ("auto", "cuda", "cpu"):
        raise CamcaffeError(f"--provider must be auto, cuda or cpu, not '{preference}'")
    if preference == "cpu":
        return [CPU]
    if cuda_usable():
        return [CUDA, CPU]
    if preference == "cuda":
        raise CamcaffeError(
            "--provider cuda: the CUDA execution provider is not usable here (no GPU, or "
            "onnxruntime-gpu without CUDA 12/13 + cuDNN 9); use --provider auto or cpu"
        )
    return [CPU]


@dataclass
class ModelInfo:
    """What camcaffe's converter recorded in the ONNX metadata (empty for foreign files)."""

    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "the model"  # the file, for error messages

    def json(self, key: str, default=None):
        value = self.metadata.get(f"camcaffe.{key}")
        if value is None:
            return default
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise OnnxModelError(
                f"{self.source}: metadata camcaffe.{key} is not valid JSON; convert the model again"
            ) from None

    @property
    def blobs(self) -> dict[str, str]:
        return self.json("blobs", {})

    @property
    def labels(self) -> list[str] | None:
        return self.json("labels")

    @property
    def preprocess(self) -> dict:
        """The recorded preprocessing, its settings checked (a bad value fails the run once, in one line,
        rather than each image)."""
        from camcaffe.runtime.presets import SETTINGS, check_settings

        stored = self.json("preprocess", {})
        if not isinstance(stored, dict):
            raise OnnxModelError(
                f"{self.source}: metadata camcaffe.preprocess is not a JSON object; write it again (camcaffe meta "
                f"{self.source} --preset ...)"
            )
        try:
            check_settings({key: stored.get(key) for key in SETTINGS})
        except CamcaffeError as exc:
            raise OnnxModelError(
                f"{self.source}: metadata camcaffe.preprocess: {exc}; write it again (camcaffe meta {self.source} ...)"
            ) from None
        return stored

    @property
    def cam_head(self) -> dict | None:
        return self.json("cam_head")

    def mean_image(self) -> np.ndarray | None:
        encoded = self.metadata.get("camcaffe.preprocess.mean_image")
        if not encoded:
            return None
        import base64
        import io

        return np.load(io.BytesIO(base64.b64decode(encoded)), allow_pickle=False)


class BoundRunner:
    """Runs one session through IO binding: inputs are copied into device buffers that are reused while
    the batch shape stays the same, and the output buffers ONNX Runtime allocated for the first batch are
    bound again for the next ones (no per-batch device allocation on the CUDA path)."""

    def __init__(self, session, device: str, device_id: int = 0):
        self.session, self.device, self.device_id = session, device, device_id
        self.binding = session.io_binding()
        self._inputs: dict[str, object] = {}
        self._outputs: dict[tuple, list] = {}

    def run(self, feeds: dict[str, np.ndarray], fetch: list[str]) -> list[np.ndarray]:
        ort = _ort()
        for name, array in feeds.items():
            # Images go in as float32; integer inputs (the class indices of an in-graph CAM) keep their type.
            array = np.ascontiguousarray(
                array, dtype=None if np.issubdtype(array.dtype, np.integer) else np.float32
            )
            value = self._inputs.get(name)
            if value is None or list(value.shape()) != list(array.shape):
                # On the CPU an OrtValue wraps the numpy memory it is made from: give it a private copy,
                # or update_inplace would overwrite the caller's array with the next batch.
                private = array.copy() if self.device == "cpu" else array
                value = ort.OrtValue.ortvalue_from_numpy(private, self.device, self.device_id)
                self._inputs[name] = value
            else:
                value.update_inplace(array)
            self.binding.bind_ortvalue_input(name, value)
        # Output buffers fit one set of input shapes (a model with a variable input size changes them).
        key = (tuple(fetch), tuple((name, tuple(self._inputs[name].shape())) for name in feeds))
        self.binding.clear_binding_outputs()
        reused = self._outputs.get(key)
        if reused is None:
            for name in fetch:
                self.binding.bind_output(name, self.device, self.device_id)
        else:
            for name, value in zip(fetch, reused, strict=True):
                self.binding.bind_ortvalue_output(name, value)
        self.session.run_with_iobinding(self.binding)
        if reused is None:
            reused = self._outputs[key] = list(self.binding.get_outputs())
        # CPU output buffers are reused by the next batch: hand out copies, never views of them.
        return [value.numpy().copy() if self.device == "cpu" else value.numpy() for value in reused]

    @property
    def buffers(self) -> tuple[list, list]:
        """(input buffers, output buffers) currently held, for inspection."""
        return list(self._inputs.values()), [v for values in self._outputs.values() for v in values]


class ModelSession:
    """One ONNX model, run with the chosen providers; sessions are cached per set of outputs.

    The file is read with camcaffe's subset of the ONNX schema (`lite`), which is all running it needs; the
    full onnx.ModelProto (`model`) is parsed on first use, by the code that edits or analyses graphs."""

    def __init__(
        self,
        model: onnx.ModelProto | str | os.PathLike,
        provider: str = "auto",
        threads: int | None = None,
        source: str | None = None,
        io_binding: bool | None = None,
    ):
        from camcaffe.runtime.model import EXTERNAL, read_lite_model

        self._model: onnx.ModelProto | None = None
        if hasattr(model, "graph"):  # an in-memory onnx.ModelProto
            self._model, self.source = model, source or "(in-memory model)"
            self._serialized: bytes | None = model.SerializeToString()
            self.lite = lite.ModelProto.FromString(self._serialized)
        else:
            self.source = str(model)
            self.lite, self._serialized = read_lite_model(model)
            self._path = model
            if any(t.data_location == EXTERNAL for t in self.lite.graph.initializer):
                self._serialized = None  # weights in a .data file: ONNX Runtime gets the full model
        self.info = ModelInfo({p.key: p.value for p in self.lite.metadata_props}, self.source)
        self.providers = choose_providers(provider)
        self.threads = threads
        # IO binding (device buffers reused between batches) on the CUDA path; optional on CPU.
        self.io_binding = (self.providers[0] == CUDA) if io_binding is None else io_binding
        self._sessions: dict[frozenset[str], object] = {}
        self._runners: dict[frozenset[str], BoundRunner] = {}
        graph = self.lite.graph
        self.input_names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        self.output_names = [o.name for o in graph.output]
        self._tensor_names = self._all_tensor_names()
        self.fixed_batch = self._fixed_batch()

    def sibling(self, threads: int | None = None, provider: str | None = None) -> ModelSession:
        """Another session on the same model (parsed once), with its own ONNX Runtime sessions."""
        other = object.__new__(ModelSession)
        other.__dict__.update(self.__dict__)
        other.providers = choose_providers(provider) if provider is not None else self.providers
        other.threads = threads if threads is not None else self.threads
        other.io_binding = self.io_binding if provider is None else other.providers[0] == CUDA
        other._sessions, other._runners = {}, {}
        return other

    @property
    def model(self) -> onnx.ModelProto:
        """The full onnx.ModelProto (imports onnx on first use)."""
        if self._model is None:
            from camcaffe.runtime.model import load_onnx_model

            self._model = load_onnx_model(self._path)
        return self._model

    def _payload(self, extra_outputs: list[str]) -> bytes:
        """The serialized model ONNX Runtime loads, with extra graph outputs appended."""
        if self._serialized is None:  # external data: only the full model carries the weights
            model = self.model
            if extra_outputs:
                import onnx

                model = onnx.ModelProto()
                model.CopyFrom(self.model)
                for name in extra_outputs:
                    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            return model.SerializeToString()
        if not extra_outputs:
            return self._serialized
        model = lite.ModelProto.FromString(self._serialized)
        for name in extra_outputs:
            model.graph.output.add(name=name)
        return model.SerializeToString()

    def input_dims(self, name: str) -> list[int | None]:
        """The declared dims of an input; None for a symbolic (variable) dim."""
        for value in self.lite.graph.input:
            if value.name == name:
                return [
                    d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in value.type.tensor_type.shape.dim
                ]
        raise OnnxModelError(f"{self.source}: no input named '{name}'")

    def _fixed_batch(self) -> int | None:
        """The batch size every input declares as a fixed number, or None (symbolic batch)."""
        leading = {tuple(self.input_dims(name)[:1]) for name in self.input_names}
        if len(leading) == 1:
            (dims,) = leading
            if dims and dims[0] is not None:
                return dims[0]
        return None

    def _all_tensor_names(self) -> set[str]:
        names = set(self.input_names)
        for node in self.lite.graph.node:
            names.update(o for o in node.output if o)
        return names

    @property
    def provider_used(self) -> str:
        session = self._session(frozenset(self.output_names))
        return session.get_providers()[0]

    def _session(self, outputs: frozenset[str]):
        session = self._sessions.get(outputs)
        if session is not None:
            return session
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        payload = self._payload([name for name in sorted(outputs) if name not in self.output_names])
        with _quiet_logs():
            session = ort.InferenceSession(payload, options, providers=self.providers)
        self._sessions[outputs] = session
        return session

    def tensor_for(self, name: str) -> str:
        """The ONNX tensor for a Caffe blob name (or a tensor name as is)."""
        blobs = self.info.blobs
        if name in blobs:
            return blobs[name]
        if name in self._tensor_names:
            return name
        import difflib

        candidates = list(blobs) or sorted(self._tensor_names)
        close = difflib.get_close_matches(name, candidates, n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise OnnxModelError(f"{self.source}: no blob or tensor named '{name}'{hint}")

    def run(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run and return the requested blobs/tensors by the names asked for. A model whose batch size is
        fixed (batch 1, say) gets any number of rows in runs of that size, the last one padded."""
        rows = {len(value) for value in feeds.values() if np.ndim(value)}
        if self.fixed_batch is not None and rows and rows != {self.fixed_batch}:
            return self._run_in_fixed_batches(feeds, outputs, rows.pop() if len(rows) == 1 else -1)
        return self._run_once(feeds, outputs)

    def _run_in_fixed_batches(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None, count: int
    ) -> dict[str, np.ndarray]:
        size = self.fixed_batch
        assert size is not None
        if count <= 0:
            raise OnnxModelError(f"{self.source}: inputs given with different numbers of rows")
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, count, size):
            chunk = {name: value[start : start + size] for name, value in feeds.items()}
            real = len(next(iter(chunk.values())))
            if real < size:  # pad with copies of the last row; their outputs are dropped
                chunk = {
                    name: np.concatenate([value, np.repeat(value[-1:], size - real, axis=0)])
                    for name, value in chunk.items()
                }
            values = self._run_once(chunk, outputs)
            for name, value in values.items():
                if np.ndim(value) == 0 or len(value) != size:
                    raise OnnxModelError(
                        f"{self.source}: the model's batch size is fixed at {size} and its output '{name}' "
                        f"(shape {np.shape(value)}) does not follow the batch; run it {size} image(s) at a "
                        f"time (--batch-size {size})"
                    )
            parts.append({name: value[:real] for name, value in values.items()})
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _run_once(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        tensors = [self.tensor_for(n) for n in names]
        wanted = frozenset(self.output_names) | frozenset(t for t in tensors if t not in self.input_names)
        session = self._session(wanted)
        fetch = [t for t in dict.fromkeys(tensors) if t not in self.input_names]
        if fetch and self.io_binding:
            runner = self._runners.get(wanted)
            if runner is None:
                device = "cuda" if session.get_providers()[0] == CUDA else "cpu"
                runner = self._runners[wanted] = BoundRunner(session, device)
            values = dict(zip(fetch, runner.run(feeds, fetch), strict=True))
        else:
            values = dict(zip(fetch, session.run(fetch, feeds), strict=True)) if fetch else {}
        values.update({t: feeds[t] for t in tensors if t in self.input_names})
        return {name: values[tensor] for name, tensor in zip(names, tensors, strict=True)}
