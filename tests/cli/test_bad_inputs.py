"""The bad-input catalogue of issue 4, run against the real command line.

Every case runs `python -m camcaffe.cli` in a subprocess and checks what a user sees: the exit code, one
`camcaffe: error:` line on stderr that names the file / layer / field / value at fault and what to do, no
traceback, and the files left behind (no output for a failed convert, no stray `.*.tmp*` files, and in a `cam`
batch the good images keep their overlays and results.csv rows while bad ones get an `error` entry)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest

from camcaffe.caffe.caffemodel import read_caffemodel, write_caffemodel
from camcaffe.convert.random_model import write_random_caffemodel
from tests.cli.test_cli import assert_one_line_error, camcaffe
from tests.helpers import default_sigint, net_text

LAYERS = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "gap" type: "Pooling" bottom: "conv" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
NET = net_text((1, 3, 16, 16), LAYERS)
CONV_LINE = 1 + NET.splitlines().index(next(line for line in NET.splitlines() if '"conv"' in line))
PREPROCESS = ["--mean", "104,117,123", "--raw-scale", "255", "--channel-swap", "2,1,0"]
REPO = Path(__file__).resolve().parents[2]


def camcaffe_non_root(*args) -> subprocess.CompletedProcess:
    """tests.test_cli.camcaffe with permission bits enforced as for an ordinary user, also under root (CI
    containers): see tests/as_non_root.py."""
    env = {k: v for k, v in os.environ.items() if k != "CAMCAFFE_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "tests.as_non_root", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


# ----------------------------------------------------------------------------------------------------------
# Helpers


def camcaffe_env(*args, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """tests.cli.test_cli.camcaffe with extra environment variables."""
    full = {k: v for k, v in os.environ.items() if k != "CAMCAFFE_DEBUG"}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "camcaffe.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full,
        timeout=300,
    )


def stray_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def assert_convert_failed(result: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    """One-line error naming the needles; no ONNX file (nor its .data) and no temporary file left."""
    assert_one_line_error(result, *needles)
    assert not out.exists()
    assert not Path(f"{out}.data").exists()
    assert not stray_temp_files(out.parent)


def write_net(folder: Path, text: str = NET, name: str = "net", seed: int = 1) -> tuple[Path, Path]:
    prototxt = folder / f"{name}.prototxt"
    prototxt.write_text(text)
    caffemodel = folder / f"{name}.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=seed)
    return prototxt, caffemodel


def convert(prototxt: Path, caffemodel: Path, out: Path, *extra: str) -> Path:
    result = camcaffe("convert", prototxt, caffemodel, "-o", out, *PREPROCESS, *extra)
    assert result.returncode == 0, result.stderr
    return out


def rewrite_caffemodel(source: Path, target: Path, edit) -> None:
    """Copy a caffemodel layer by layer; edit(name, type, blobs) returns new blobs, or None to drop the layer."""
    layers = []
    for name, layer in read_caffemodel(source).layers.items():
        blobs = edit(name, layer.type, [b.values.reshape(b.shape).copy() for b in layer.blobs])
        if blobs is not None:
            layers.append((name, layer.type, blobs))
    write_caffemodel(target, layers)


def write_png(path: Path, image: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(encoded.tobytes())  # cv2.imwrite cannot write non-ASCII paths everywhere
    return path


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=2)
    return np.clip(base + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)


def cmyk_jpeg(blocks: list[list[tuple[int, int, int, int]]]) -> bytes:
    """A baseline JPEG with four components (Adobe CMYK), one flat colour per 8x8 block.

    Neither OpenCV nor numpy writes CMYK JPEGs; a flat block has only a DC coefficient, so the entropy coding
    is a DC difference and an end-of-block code per block and component."""
    rows, cols = len(blocks), len(blocks[0])

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    dc_bits = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # ITU T.81 Annex K luminance DC table
    dc_codes: dict[int, tuple[int, int]] = {}
    code, symbol = 0, 0
    for length, count in enumerate(dc_bits, start=1):
        for _ in range(count):
            dc_codes[symbol] = (code, length)
            code, symbol = code + 1, symbol + 1
        code <<= 1
    ac_bits = [1] + [0] * 15  # one symbol, end-of-block, coded as the single bit 0
    header = b"\xff\xd8"
    header += segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))  # transform 0: CMYK as stored
    header += segment(0xDB, b"\x00" + bytes([1] * 64))
    header += segment(
        0xC0,
        struct.pack(">BHHB", 8, rows * 8, cols * 8, 4) + b"".join(bytes([i, 0x11, 0]) for i in range(1, 5)),
    )
    header += segment(0xC4, b"\x00" + bytes(dc_bits) + bytes(range(12)))
    header += segment(0xC4, b"\x10" + bytes(ac_bits) + b"\x00")
    header += segment(0xDA, b"\x04" + b"".join(bytes([i, 0x00]) for i in range(1, 5)) + b"\x00\x3f\x00")
    bits: list[int] = []

    def put(value: int, length: int) -> None:
        bits.extend((value >> (length - 1 - i)) & 1 for i in range(length))

    previous = [0, 0, 0, 0]
    for row in blocks:
        for colour in row:
            for component, level in enumerate(colour):
                dc = 8 * (level - 128)  # the DCT of a flat block, quantiser 1
                diff = dc - previous[component]
                previous[component] = dc
                size = abs(diff).bit_length()
                put(*dc_codes[size])
                if size:
                    put(diff if diff > 0 else diff + (1 << size) - 1, size)
                put(0, 1)  # end of block
    bits.extend([1] * (-len(bits) % 8))
    data = bytearray()
    for i in range(0, len(bits), 8):
        byte = int("".join(map(str, bits[i : i + 8])), 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)
    return header + bytes(data) + b"\xff\xd9"


@pytest.fixture
def net(tmp_path) -> tuple[Path, Path]:
    return write_net(tmp_path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The small CAM net converted with ImageNet-style preprocessing."""
    folder = tmp_path_factory.mktemp("model")
    prototxt, caffemodel = write_net(folder)
    return convert(prototxt, caffemodel, folder / "net.onnx")


# ----------------------------------------------------------------------------------------------------------
# Paths


def test_missing_files(net, tmp_path):
    prototxt, caffemodel = net
    out = tmp_path / "o.onnx"
    missing = tmp_path / "nope.prototxt"
    assert_convert_failed(camcaffe("convert", missing, caffemodel, "-o", out), out, str(missing), "not found")
    missing = tmp_path / "nope.caffemodel"
    assert_convert_failed(camcaffe("convert", prototxt, missing, "-o", out), out, str(missing), "not found")
    missing = tmp_path / "nope.onnx"
    result = camcaffe("cam", missing, tmp_path, "--out", tmp_path / "cams")
    assert_one_line_error(result, str(missing), "not found")
    assert not (tmp_path / "cams").exists()


def test_directory_where_a_file_is_expected(net, tmp_path):
    prototxt, caffemodel = net
    folder = tmp_path / "folder.prototxt"
    folder.mkdir()
    out = tmp_path / "o.onnx"
    assert_convert_failed(camcaffe("convert", folder, caffemodel, "-o", out), out, str(folder), "director")
    assert_convert_failed(camcaffe("convert", prototxt, folder, "-o", out), out, str(folder), "director")
    result = camcaffe("convert", prototxt, caffemodel, "-o", folder)
    assert_one_line_error(result, str(folder), "-o")
    assert not list(folder.iterdir())
    result = camcaffe("cam", folder, tmp_path, "--out", tmp_path / "cams")
    assert_one_line_error(result, str(folder), "directory")


def test_out_is_a_file(model, tmp_path):
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    target = tmp_path / "results"
    target.write_text("keep me")
    result = camcaffe("cam", model, image, "--out", target)
    assert_one_line_error(result, str(target), "not a folder")
    assert target.read_text() == "keep me"


def test_unreadable_files(net, model, tmp_path):
    prototxt, caffemodel = net
    out = tmp_path / "o.onnx"
    for victim in (prototxt, caffemodel):
        victim.chmod(0)
        try:
            result = camcaffe_non_root("convert", prototxt, caffemodel, "-o", out)
        finally:
            victim.chmod(0o644)
        assert_convert_failed(result, out, str(victim))
        assert "not readable (permissions)" in result.stderr  # (the folder's name holds "unreadable")
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    locked = tmp_path / "locked.onnx"
    locked.write_bytes(model.read_bytes())
    locked.chmod(0)
    (tmp_path / "cams").mkdir()
    result = camcaffe_non_root("cam", locked, image, "--out", tmp_path / "cams")
    assert_one_line_error(result, f"{locked}: not readable (permissions)")
    assert not list((tmp_path / "cams").iterdir())
    locked.chmod(0o644)  # the same run with the file readable works: the refusal came from the permission
    assert camcaffe_non_root("cam", locked, image, "--out", tmp_path / "cams").returncode == 0


def test_output_folder_not_writable(net, model, tmp_path):
    prototxt, caffemodel = net
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    try:
        out = locked / "o.onnx"
        result = camcaffe_non_root("convert", prototxt, caffemodel, "-o", out)
        assert_convert_failed(result, out, f"{locked}: output folder is not writable")
        result = camcaffe_non_root("cam", model, image, "--out", locked)
        assert_one_line_error(result, f"{locked}: output folder is not writable")
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)
    # writable again: both commands write there
    assert camcaffe_non_root("convert", prototxt, caffemodel, "-o", out).returncode == 0 and out.exists()
    assert camcaffe_non_root("cam", model, image, "--out", locked).returncode == 0


def test_output_folder_missing(net, tmp_path):
    prototxt, caffemodel = net
    out = tmp_path / "no" / "such" / "o.onnx"
    result = camcaffe("convert", prototxt, caffemodel, "-o", out)
    assert_one_line_error(result, str(out.parent), "does not exist")
    assert not (tmp_path / "no").exists()


# ----------------------------------------------------------------------------------------------------------
# Prototxt


PROTOTXT_CASES = {
    "empty": (lambda text: "", ["bad.prototxt", "empty"]),
    "binary_garbage": (lambda text: None, ["bad.prototxt", "binary"]),
    "syntax_error": (
        lambda text: text.replace("kernel_size: 3 pad: 1", "kernel_size: 3 } pad: 1"),
        [f"bad.prototxt:{CONV_LINE}:129:", "Expected identifier", "syntax"],
    ),
    "bad_value": (
        lambda text: text.replace("num_output: 6", "num_output: six"),
        [f"bad.prototxt:{CONV_LINE}:", "six", "syntax"],
    ),
    "unclosed_brace": (lambda text: text.rstrip().rstrip("}"), ["bad.prototxt:", "syntax"]),
    "unknown_field": (
        lambda text: text.replace("pad: 1", "padd: 1"),
        [f"bad.prototxt:{CONV_LINE}:118:", "layer 'conv'", "unknown field 'padd'", "spelling"],
    ),
    "unknown_layer_types": (
        lambda text: text.replace('"ReLU"', '"Bar"').replace('"Softmax"', '"Foo"'),
        ["bad.prototxt", "Bar, Foo", "'relu' (Bar)", "'prob' (Foo)", "camcaffe converts"],
    ),
    "bottom_nobody_produces": (
        lambda text: text.replace('bottom: "gap"', 'bottom: "gapp"'),
        ["bad.prototxt", "layer 'fc'", "'gapp'", "no earlier layer produces", "bottom names"],
    ),
    # Repeated layer names are accepted, as by Caffe: tests/convert/test_duplicate_names.py.
    "missing_top": (
        lambda text: text.replace(' top: "fc" inner', " inner"),
        ["bad.prototxt", "'fc'", "no earlier layer produces"],
    ),
    "too_many_bottoms": (
        lambda text: text.replace('bottom: "gap" top: "fc"', 'bottom: "gap" bottom: "conv" top: "fc"'),
        ["bad.prototxt", "'fc'", "1 bottom", "got 2"],
    ),
    "too_many_tops": (
        lambda text: text.replace('top: "fc" inner', 'top: "fc" top: "fc2" inner'),
        ["bad.prototxt", "'fc'", "1 top", "got 2"],
    ),
    "top_overwrites_a_blob": (
        lambda text: text.replace('bottom: "gap" top: "fc"', 'bottom: "gap" top: "conv"').replace(
            'bottom: "fc" top: "prob"', 'bottom: "conv" top: "prob"'
        ),
        ["bad.prototxt", "layer 'fc'", "writes blob 'conv'", "already produced"],
    ),
    "duplicate_top": (
        lambda text: text.replace('top: "fc" inner', 'top: "fc" top: "fc" inner'),
        ["bad.prototxt", "'fc'", "top 'fc' twice"],
    ),
    "zero_dimension": (
        lambda text: text.replace("input_dim: 16", "input_dim: 0", 1),
        ["bad.prototxt", "input 'data'", "(1, 3, 0, 16)", "positive"],
    ),
    "negative_dimension": (
        lambda text: text.replace("input_dim: 16", "input_dim: -4", 1),
        ["bad.prototxt", "input 'data'", "(1, 3, -4, 16)", "positive"],
    ),
    "zero_num_output": (
        lambda text: text.replace("num_output: 6", "num_output: 0"),
        ["bad.prototxt", "'conv'", "num_output"],
    ),
    "pooling_window_larger_than_input": (
        lambda text: text.replace("pool: AVE global_pooling: true", "pool: MAX kernel_size: 40"),
        ["bad.prototxt", "'gap'"],
    ),
    "no_layers": (lambda text: net_text((1, 3, 16, 16), ""), ["bad.prototxt", "no layers"]),
    "no_input_shape": (
        lambda text: 'name: "t"\ninput: "data"\n' + LAYERS,
        ["bad.prototxt", "data", "no shape", "input_shape"],
    ),
}


@pytest.mark.parametrize("case", list(PROTOTXT_CASES))
def test_bad_prototxt(net, tmp_path, case):
    _, caffemodel = net
    edit, needles = PROTOTXT_CASES[case]
    bad = tmp_path / "bad.prototxt"
    text = edit(NET)
    if text is None:
        bad.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8)))
    else:
        bad.write_text(text)
    out = tmp_path / "o.onnx"
    assert_convert_failed(camcaffe("convert", bad, caffemodel, "-o", out), out, *needles)


def test_in_place_convolution_is_refused(net, tmp_path):
    _, caffemodel = net
    bad = tmp_path / "bad.prototxt"
    bad.write_text(
        NET.replace('bottom: "data" top: "conv"', 'bottom: "data" top: "data"').replace(
            'name: "relu" type: "ReLU" bottom: "conv"', 'name: "relu" type: "ReLU" bottom: "data"'
        )
    )
    out = tmp_path / "o.onnx"
    assert_convert_failed(camcaffe("convert", bad, caffemodel, "-o", out), out, "layer 'conv'", "in-place")


# Runs the CLI and records the process's own VmHWM at exit. (wait4's ru_maxrss is no use here: Linux
# carries the forking test process's high-water mark into the child's.)
_MEASURED_CLI = """
import atexit, os, sys
def _record():
    with open(os.environ["CAMCAFFE_TEST_HWM_FILE"], "w") as out:
        out.write(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
atexit.register(_record)
from camcaffe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_measured(args: list, env: dict[str, str]) -> tuple[int, str, float, int]:
    """Run the CLI; (exit code, stderr, seconds, peak RSS in bytes) of that process alone."""
    full = {k: v for k, v in os.environ.items() if k != "CAMCAFFE_DEBUG"}
    full.update(env)
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as folder:
        hwm_file = Path(folder) / "hwm"
        full["CAMCAFFE_TEST_HWM_FILE"] = str(hwm_file)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURED_CLI, *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=full,
        )
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        elapsed = time.monotonic() - started
        err.seek(0)
        return proc.returncode, err.read().decode(), elapsed, int(hwm_file.read_text()) * 1024


def test_absurd_input_shape_is_refused_before_allocation(net, tmp_path):
    _, caffemodel = net
    bad = tmp_path / "huge.prototxt"
    bad.write_text(NET.replace("input_dim: 16", "input_dim: 100000"))
    out = tmp_path / "o.onnx"
    code, stderr, seconds, rss = run_measured(["convert", bad, caffemodel, "-o", out], {})
    result = subprocess.CompletedProcess([], code, "", stderr)
    assert_convert_failed(
        result, out, "huge.prototxt", "1x3x100000x100000", "30000000000", "CAMCAFFE_MAX_BLOB_ELEMENTS"
    )
    assert seconds < 60, f"took {seconds:.1f} s"
    assert rss < 1024**3, f"peak RSS {rss / 1024**2:.0f} MiB: something was allocated"


def test_absurd_computed_blob_is_refused_before_allocation(net, tmp_path):
    _, caffemodel = net
    bad = tmp_path / "wide.prototxt"
    # the input (3 x 7000 x 7000 = 147 M elements) is allowed; conv's top (6 x 7000 x 7000) is not
    bad.write_text(NET.replace("input_dim: 16", "input_dim: 7000"))
    out = tmp_path / "o.onnx"
    code, stderr, seconds, rss = run_measured(["convert", bad, caffemodel, "-o", out], {})
    assert_convert_failed(
        subprocess.CompletedProcess([], code, "", stderr), out, "wide.prototxt", "CAMCAFFE_MAX_BLOB_ELEMENTS"
    )
    assert "'conv'" in stderr
    assert rss < 1024**3, f"peak RSS {rss / 1024**2:.0f} MiB: something was allocated"


def test_limits_are_configurable(net, model, tmp_path):
    prototxt, caffemodel = net
    out = tmp_path / "o.onnx"
    result = camcaffe_env(
        "convert", prototxt, caffemodel, "-o", out, env={"CAMCAFFE_MAX_BLOB_ELEMENTS": "1000"}
    )
    assert_convert_failed(result, out, "net.prototxt", "1000", "CAMCAFFE_MAX_BLOB_ELEMENTS")
    result = camcaffe_env(
        "convert", prototxt, caffemodel, "-o", out, env={"CAMCAFFE_MAX_PROTOTXT_BYTES": "100"}
    )
    assert_convert_failed(result, out, "net.prototxt", "100", "CAMCAFFE_MAX_PROTOTXT_BYTES")
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    result = camcaffe_env(
        "cam", model, image, "--out", tmp_path / "cams", env={"CAMCAFFE_MAX_ONNX_BYTES": "100"}
    )
    assert_one_line_error(result, str(model), "100", "CAMCAFFE_MAX_ONNX_BYTES")
    assert not (tmp_path / "cams").exists()


LIMIT_VARIABLES = [
    # variable, the module that reads it, the command that uses it
    ("CAMCAFFE_MAX_BLOB_ELEMENTS", "camcaffe/caffe/net.py", "convert"),
    ("CAMCAFFE_MAX_PROTOTXT_BYTES", "camcaffe/caffe/prototxt.py", "convert"),
    ("CAMCAFFE_EXTERNAL_DATA_THRESHOLD", "camcaffe/convert/onnx_io.py", "convert"),
    ("CAMCAFFE_MAX_ONNX_BYTES", "camcaffe/runtime_model.py", "cam"),
]


@pytest.mark.parametrize("value", ["lots", "1e9"])
@pytest.mark.parametrize(
    "variable, command",
    [
        pytest.param(
            name,
            command,
            id=name,
        )
        for name, module, command in LIMIT_VARIABLES
    ],
)
def test_bad_limit_value_is_a_one_line_error(net, model, tmp_path, variable, command, value):
    env = {variable: value}
    if command == "convert":
        out = tmp_path / "o.onnx"
        result = camcaffe_env("convert", *net, "-o", out, env=env)
        assert_convert_failed(result, out, variable, value)
    else:
        image = write_png(tmp_path / "img.png", smooth_image(20, 30))
        result = camcaffe_env("cam", model, image, "--out", tmp_path / "cams", env=env)
        assert_one_line_error(result, variable, value)
        assert not (tmp_path / "cams").exists()


@pytest.mark.parametrize("value", ["lots", "0"])
def test_bad_image_pixel_limit_is_a_one_line_error(model, tmp_path, value):
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    out = tmp_path / "cams"
    result = camcaffe_env("cam", model, image, "--out", out, env={"CAMCAFFE_MAX_IMAGE_PIXELS": value})
    assert_one_line_error(result, "CAMCAFFE_MAX_IMAGE_PIXELS", repr(value))
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# caffemodel


def _drop_fc(name, type_, blobs):
    return None if name == "fc" else blobs


def _conv_without_bias(name, type_, blobs):
    return blobs[:1] if name == "conv" else blobs


def _fc_three_blobs(name, type_, blobs):
    return [*blobs, np.zeros(3, np.float32)] if name == "fc" else blobs


def _conv_wrong_shape(name, type_, blobs):
    return [np.zeros((6, 3, 5, 5), np.float32), blobs[1]] if name == "conv" else blobs


CAFFEMODEL_CASES = {
    "empty": (lambda source, target: target.write_bytes(b""), ["bad.caffemodel", "empty"]),
    "truncated": (
        lambda source, target: target.write_bytes(source.read_bytes()[: source.stat().st_size // 2]),
        ["bad.caffemodel", "truncated", "byte"],
    ),
    "text_not_a_caffemodel": (
        lambda source, target: target.write_text("this is a README, not weights\n" * 20),
        ["bad.caffemodel", "not a valid caffemodel"],
    ),
    "png_not_a_caffemodel": (
        lambda source, target: target.write_bytes(cv2.imencode(".png", smooth_image(8, 8))[1].tobytes()),
        ["bad.caffemodel", "caffemodel"],
    ),
    "missing_weights_for_a_layer": (
        lambda source, target: rewrite_caffemodel(source, target, _drop_fc),
        ["bad.caffemodel", "'fc'"],
    ),
    "wrong_blob_count": (
        lambda source, target: rewrite_caffemodel(source, target, _conv_without_bias),
        ["bad.caffemodel", "'conv'", "2", "1"],
    ),
    "extra_blob": (
        lambda source, target: rewrite_caffemodel(source, target, _fc_three_blobs),
        ["bad.caffemodel", "'fc'", "3"],
    ),
    "wrong_shape": (
        lambda source, target: rewrite_caffemodel(source, target, _conv_wrong_shape),
        ["layer 'conv'", "(6, 3, 5, 5)", "(6, 3, 3, 3)"],
    ),
}


@pytest.mark.parametrize("case", list(CAFFEMODEL_CASES))
def test_bad_caffemodel(net, tmp_path, case):
    prototxt, caffemodel = net
    make, needles = CAFFEMODEL_CASES[case]
    bad = tmp_path / "bad.caffemodel"
    make(caffemodel, bad)
    out = tmp_path / "o.onnx"
    assert_convert_failed(camcaffe("convert", prototxt, bad, "-o", out, *PREPROCESS), out, *needles)


def test_caffemodel_of_another_net(net, tmp_path):
    _, caffemodel = net
    other = tmp_path / "other.prototxt"
    other.write_text(NET.replace('"conv"', '"conv_x"').replace('"fc"', '"fc_x"'))
    out = tmp_path / "o.onnx"
    result = camcaffe("convert", other, caffemodel, "-o", out)
    assert_convert_failed(result, out, "net.caffemodel", "caffemodel of another net")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_weights_warn_naming_the_layer(net, tmp_path, value):
    prototxt, caffemodel = net

    def poison(name, type_, blobs):
        if name == "conv":
            blobs[0][1, 2, 0, 0] = value
        return blobs

    bad = tmp_path / "bad.caffemodel"
    rewrite_caffemodel(caffemodel, bad, poison)
    out = tmp_path / "o.onnx"
    result = camcaffe("convert", prototxt, bad, "-o", out, *PREPROCESS)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("camcaffe: warning:")]
    assert len(warnings) == 1, result.stderr
    assert "layer 'conv'" in warnings[0] and "NaN/Inf" in warnings[0]
    assert "Traceback" not in result.stderr
    assert out.exists() and not stray_temp_files(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# ONNX


def test_corrupt_or_not_onnx(model, net, tmp_path):
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    cases = {
        "garbage.onnx": b"\x08\x07garbage" * 10,
        "empty.onnx": b"",
        "truncated.onnx": model.read_bytes()[: model.stat().st_size // 2],
        "picture.onnx": image.read_bytes(),
        "weights.onnx": net[1].read_bytes(),
    }
    for name, data in cases.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        out = tmp_path / f"cams_{name}"
        result = camcaffe("cam", bad, image, "--out", out)
        assert_one_line_error(result, str(bad))
        assert any(word in result.stderr for word in ("not a valid ONNX", "empty file")), result.stderr
        assert not out.exists()
        shown = camcaffe("inspect", bad)
        assert_one_line_error(shown, str(bad))


def test_external_data_outside_the_model_folder(net, tmp_path):
    prototxt, caffemodel = net
    folder = tmp_path / "model"
    folder.mkdir()
    good = convert(prototxt, caffemodel, folder / "m.onnx", "--external-data")
    assert (folder / "m.onnx.data").exists()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 4096)
    proto = onnx.load(str(good), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    evil = folder / "evil.onnx"
    onnx.save(proto, str(evil))
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    result = camcaffe("cam", evil, image, "--out", tmp_path / "cams")
    assert_one_line_error(result, str(evil), "../secret.bin", "outside the model's folder")
    assert not (tmp_path / "cams").exists()
    for entry in [e for t in proto.graph.initializer for e in t.external_data if e.key == "location"]:
        entry.value = str(secret)
    onnx.save(proto, str(evil))
    result = camcaffe("cam", evil, image, "--out", tmp_path / "cams")
    assert_one_line_error(result, str(evil), str(secret), "outside the model's folder")


@pytest.mark.parametrize(
    "flag, name, closest",
    [("--feature-layer", "convv", "conv"), ("--fc-layer", "fc1", "fc"), ("--feature-layer", "Conv", "conv")],
)
def test_layer_name_not_in_model_suggests_closest(model, tmp_path, flag, name, closest):
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    result = camcaffe("cam", model, image, "--out", tmp_path / "cams", flag, name)
    assert_one_line_error(result, f"'{name}'", f"closest names: {closest}")
    assert not (tmp_path / "cams").exists()


def test_model_without_cam_head(tmp_path):
    no_gap = net_text(
        (1, 3, 16, 16),
        """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
    )
    prototxt, caffemodel = write_net(tmp_path, no_gap, name="nogap")
    onnx_path = convert(prototxt, caffemodel, tmp_path / "nogap.onnx")
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    result = camcaffe("cam", onnx_path, image, "--out", tmp_path / "cams")
    assert_one_line_error(
        result, "no CAM head", "looked for", "GlobalAveragePool", "--feature-layer", "--fc-layer"
    )
    assert not (tmp_path / "cams").exists()


# ----------------------------------------------------------------------------------------------------------
# Labels


LABEL_CASES = {
    "wrong_count": (b"cat\ndog\n", ["2", "3"]),
    "duplicate_index": (b"0 cat\n1 dog\n1 bird\n", ["index 1", "twice", "lines 2 and 3"]),
    "missing_index": (b"0 cat\n1 dog\n3 bird\n", ["index 2", "missing"]),
    "duplicate_index_csv": (b"index,label\n0,cat\n0,dog\n2,bird\n", ["index 0", "twice"]),
    "undecodable_bytes": (b"cat\nd\xffg\nbird\n", ["UTF-8", "0xff", "offset 5"]),
    "empty_file": (b"", ["empty"]),
    "blank_line": (b"cat\n\nbird\n", ["line 2", "blank"]),
}


LABEL_PARAMS = [
    pytest.param(
        command,
        case,
        id=f"{command}-{case}",
    )
    for command in ("convert", "cam")
    for case in LABEL_CASES
]


@pytest.mark.parametrize("command, case", LABEL_PARAMS)
def test_bad_labels(net, model, tmp_path, command, case):
    data, needles = LABEL_CASES[case]
    labels = tmp_path / "labels.txt"
    labels.write_bytes(data)
    if command == "convert":
        out = tmp_path / "o.onnx"
        result = camcaffe("convert", *net, "-o", out, *PREPROCESS, "--labels", labels)
        assert_convert_failed(result, out, str(labels), *needles)
    else:
        image = write_png(tmp_path / "img.png", smooth_image(20, 30))
        out = tmp_path / "cams"
        result = camcaffe("cam", model, image, "--out", out, "--labels", labels)
        assert_one_line_error(result, str(labels), *needles)
        assert not out.exists()


def test_missing_label_file(net, model, tmp_path):
    labels = tmp_path / "nope.txt"
    out = tmp_path / "o.onnx"
    result = camcaffe("convert", *net, "-o", out, "--labels", labels)
    assert_convert_failed(result, out, str(labels), "does not exist")
    image = write_png(tmp_path / "img.png", smooth_image(20, 30))
    result = camcaffe("cam", model, image, "--out", tmp_path / "cams", "--labels", labels)
    assert_one_line_error(result, str(labels), "does not exist")


# ----------------------------------------------------------------------------------------------------------
# Images in a `cam` batch


def _truncated_jpeg() -> bytes:
    ok, encoded = cv2.imencode(".jpg", smooth_image(200, 300), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()[:1500]


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _cmyk() -> bytes:
    colours = [[(0, 0, 0, 0), (255, 0, 0, 0)], [(0, 255, 0, 40), (10, 20, 255, 0)]]
    data = cmyk_jpeg(colours)
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        pytest.skip("this OpenCV build does not decode CMYK JPEG files")
    return data


IMAGE_CASES = {
    # name: (file name, bytes factory, works, needles for the per-image error)
    "zero_bytes": ("empty.jpg", lambda: b"", False, ["zero-byte"]),
    "truncated_jpeg": ("cut.jpg", _truncated_jpeg, False, ["cannot be decoded", "truncated"]),
    "not_an_image": ("notes.png", lambda: b"shopping list: eggs, milk\n" * 10, False, ["cannot be decoded"]),
    "html_as_jpg": ("page.jpg", lambda: b"<!DOCTYPE html><html>404</html>", False, ["cannot be decoded"]),
    "png_16bit": (
        "deep.png",
        lambda: _png(smooth_image(24, 32).astype(np.uint16) * 257),
        True,
        [],
    ),
    "grayscale": ("gray.png", lambda: _png(smooth_image(24, 32)[:, :, 0]), True, []),
    "rgba": (
        "alpha.png",
        lambda: _png(np.dstack([smooth_image(24, 32), np.full((24, 32), 100, np.uint8)])),
        True,
        [],
    ),
    "grayscale_16bit": (
        "gray16.png",
        lambda: _png(smooth_image(24, 32)[:, :, 0].astype(np.uint16) * 257),
        True,
        [],
    ),
    "cmyk_jpeg": ("cmyk.jpg", _cmyk, True, []),
    "one_pixel": ("dot.png", lambda: _png(np.array([[[10, 200, 30]]], np.uint8)), True, []),
    "path_with_spaces_and_non_ascii": ("photo é ü 漢字.png", lambda: _png(smooth_image(24, 32)), True, []),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_in_a_batch(model, tmp_path, case):
    name, make, works, needles = IMAGE_CASES[case]
    folder = tmp_path / "in put ü"
    folder.mkdir()
    write_png(folder / "good.png", smooth_image(40, 50, seed=3))
    subject = folder / name
    subject.write_bytes(make())
    out = tmp_path / "cams"
    result = camcaffe("cam", model, folder, "--out", out)
    assert "Traceback" not in result.stderr
    assert "error:" not in result.stderr, result.stderr
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(table) == 2, table
    rows = {Path(p).name: row for p, row in zip(table["image"], table.itertuples(), strict=True)}
    assert rows["good.png"].error == "" and Path(rows["good.png"].overlay).exists()
    row = rows[name]
    if works:
        assert result.returncode == 0, result.stderr
        assert row.error == ""
        overlay = cv2.imdecode(np.fromfile(row.overlay, np.uint8), cv2.IMREAD_UNCHANGED)
        decoded = cv2.imdecode(np.fromfile(subject, np.uint8), cv2.IMREAD_UNCHANGED)
        # the overlay is the photo with a label strip above it
        assert overlay.shape[1:] == (decoded.shape[1], 3) and overlay.shape[0] > decoded.shape[0]
        assert 0 <= row.x0 <= row.x1 < decoded.shape[1] and 0 <= row.y0 <= row.y1 < decoded.shape[0]
    else:
        assert result.returncode == 1, result.stderr
        assert row.overlay == "" and str(subject) in row.error
        for needle in needles:
            assert needle in row.error, row.error
        warnings = [line for line in result.stderr.splitlines() if line.startswith("camcaffe: warning:")]
        assert len(warnings) == 1 and str(subject) in warnings[0], result.stderr
        assert not list(out.glob(f"{Path(name).stem}_cam*"))
    assert not stray_temp_files(out)


def test_decompression_bomb_is_refused_per_image(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "small.png", smooth_image(20, 25))
    big_png = write_png(folder / "big.png", smooth_image(60, 80))
    ok, encoded = cv2.imencode(".jpg", smooth_image(60, 80))
    big_jpg = folder / "big.jpg"
    big_jpg.write_bytes(encoded.tobytes())
    out = tmp_path / "cams"
    result = camcaffe_env("cam", model, folder, "--out", out, env={"CAMCAFFE_MAX_IMAGE_PIXELS": "1000"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr
    table = pd.read_csv(out / "results.csv", keep_default_na=False).set_index("image")
    assert table.loc[str(folder / "small.png"), "error"] == ""
    assert Path(table.loc[str(folder / "small.png"), "overlay"]).exists()
    for bomb in (big_png, big_jpg):
        message = table.loc[str(bomb), "error"]
        assert str(bomb) in message and "80x60" in message and "4800" in message
        assert "1000" in message and "CAMCAFFE_MAX_IMAGE_PIXELS" in message
        assert any(
            str(bomb) in line and "CAMCAFFE_MAX_IMAGE_PIXELS" in line for line in result.stderr.splitlines()
        )


def test_missing_image_in_a_batch(model, tmp_path):
    good = write_png(tmp_path / "good.png", smooth_image(20, 25))
    missing = tmp_path / "gone.png"
    out = tmp_path / "cams"
    result = camcaffe("cam", model, good, missing, "--out", out)
    assert result.returncode == 1
    table = pd.read_csv(out / "results.csv", keep_default_na=False).set_index("image")
    assert Path(table.loc[str(good), "overlay"]).exists()
    assert str(missing) in table.loc[str(missing), "error"]
    assert "Traceback" not in result.stderr


def test_only_bad_images_exit_1_with_a_table(model, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out = tmp_path / "cams"
    result = camcaffe("cam", model, empty, "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(table["image"]) == [str(empty)] and table["error"][0]


# ----------------------------------------------------------------------------------------------------------
# Interruption


IMAGES_TO_INTERRUPT = 400


@pytest.mark.slow
def test_ctrl_c_leaves_a_consistent_results_table(tmp_path):
    prototxt, caffemodel = write_net(tmp_path)
    onnx_path = convert(prototxt, caffemodel, tmp_path / "net.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    ok, encoded = cv2.imencode(".jpg", smooth_image(1200, 1600), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    # Enough work that a busy machine cannot finish it between the first overlay and the signal.
    for i in range(IMAGES_TO_INTERRUPT):
        (folder / f"img_{i:03d}.jpg").write_bytes(encoded.tobytes())
    out = tmp_path / "cams"
    env = {k: v for k, v in os.environ.items() if k != "CAMCAFFE_DEBUG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "camcaffe.cli", "cam", str(onnx_path), str(folder), "--out", str(out)]
        + ["--batch-size", "1", "--provider", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and list(out.glob("*_cam.png"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no overlay appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    table = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(table.columns)[:2] == ["image", "rank"] and "error" in table.columns
    assert 1 <= len(table) < IMAGES_TO_INTERRUPT, f"{len(table)} rows: the run was not interrupted mid-batch"
    assert (table["error"] == "").all()
    for overlay in table["overlay"]:
        assert Path(overlay).exists(), overlay
    listed = {Path(p).name for p in table["overlay"]}
    unlisted = sorted(p.name for p in out.glob("*_cam.png") if p.name not in listed)
    assert not unlisted, f"overlays on disk without a results.csv row: {unlisted}"
    assert not stray_temp_files(out)
