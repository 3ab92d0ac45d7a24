"""`camcaffe web`'s site: the folder as written (contents, replacement, nothing half-written on failure) and the
page in a real headless Chromium, against `camcaffe cam` on the same photos."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from camcaffe.cli.main import main
from camcaffe.convert.api import Preprocessing, convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.errors import InputFileError
from camcaffe.output import web, web_vendor
from camcaffe.output.web import SiteSpec, is_site, jet_colormap, write_site
from tests import cdp

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
PHOTOS = sorted(p for p in (DEMO / "images").iterdir() if p.suffix in (".jpg", ".png"))
IMAGENET = Preprocessing(mean=[104.0, 117.0, 123.0], raw_scale=255.0, channel_swap=[2, 1, 0])
MAP_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------------------------------------
# The folder


@pytest.fixture
def vendor(tmp_path) -> Path:
    folder = tmp_path / "ort-web"
    folder.mkdir()
    for name in web_vendor.files_needed(webgpu=True):
        (folder / name).write_bytes(f"// {name}\n".encode())
    return folder


def spec(vendor: Path, **changes) -> SiteSpec:
    config = {"title": "t", "labels": ["a", "b"], "input": {"shape": [1, 3, 4, 4]}}
    return SiteSpec(**{"model": b"model-bytes", "config": config, "vendor_dir": vendor, **changes})


def test_the_site_holds_page_model_settings_runtime_and_its_record(tmp_path, vendor):
    site = write_site(tmp_path / "site", spec(vendor))
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert names == {
        "index.html",
        "app.js",
        "style.css",
        "model.onnx",
        "config.json",
        "VENDOR.txt",
        *(f"ort/{n}" for n in web_vendor.files_needed(True)),
    }
    assert (site / "model.onnx").read_bytes() == b"model-bytes"
    config = json.loads((site / "config.json").read_text())
    assert config["generator"] == web.GENERATOR and config["model"] == "model.onnx"
    assert (
        config["ort_web"] == {"version": web_vendor.VERSION, "webgpu": True} and config["mean_image"] is None
    )
    record = (site / "VENDOR.txt").read_text()
    assert f"onnxruntime-web {web_vendor.VERSION}" in record and web_vendor.INTEGRITY in record
    for name in web_vendor.files_needed(True):
        assert f"ort/{name}  {web_vendor.sha256_of(vendor / name)}" in record
    page = (site / "index.html").read_text()
    assert (
        'src="app.js"' in page and "Content-Security-Policy" in page and "http" not in page.split("<body>")[1]
    )
    assert "cdn" not in (site / "app.js").read_text().lower()


def test_a_mean_image_is_written_little_endian_float32(tmp_path, vendor):
    mean = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    site = write_site(tmp_path / "site", spec(vendor, mean_image=mean))
    np.testing.assert_array_equal(np.fromfile(site / "mean.bin", dtype="<f4").reshape(3, 4, 4), mean)
    assert json.loads((site / "config.json").read_text())["mean_image"] == {
        "file": "mean.bin",
        "shape": [3, 4, 4],
    }


def test_without_webgpu_only_the_webassembly_build_is_copied(tmp_path, vendor):
    site = write_site(tmp_path / "site", spec(vendor, webgpu=False))
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(web_vendor.WASM_FILES)


def test_a_site_written_before_is_replaced_and_a_foreign_folder_refused(tmp_path, vendor):
    site = write_site(tmp_path / "site", spec(vendor))
    (site / "stale.txt").write_text("old")
    write_site(site, spec(vendor))
    assert not (site / "stale.txt").exists() and is_site(site)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    with pytest.raises(InputFileError, match="not a site camcaffe web wrote"):
        write_site(foreign, spec(vendor))
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]
    with pytest.raises(InputFileError, match="is a file"):
        write_site(foreign / "cat.jpg", spec(vendor))


def test_a_failure_while_writing_leaves_neither_a_half_site_nor_scratch_folders(
    tmp_path, vendor, monkeypatch
):
    real_copy = shutil.copyfile

    def failing_copy(source, target, *args, **kwargs):
        if Path(source).name.endswith(".wasm"):
            raise OSError(28, "No space left on device")
        return real_copy(source, target, *args, **kwargs)

    monkeypatch.setattr(web.shutil, "copyfile", failing_copy)
    with pytest.raises(InputFileError, match="No space left on device"):
        write_site(tmp_path / "site", spec(vendor))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ort-web"]
    # A site that was there stays whole when its replacement fails.
    monkeypatch.setattr(web.shutil, "copyfile", real_copy)
    site = write_site(tmp_path / "site", spec(vendor))
    monkeypatch.setattr(web.shutil, "copyfile", failing_copy)
    with pytest.raises(InputFileError):
        write_site(site, spec(vendor, model=b"new"))
    assert (site / "model.onnx").read_bytes() == b"model-bytes" and is_site(site)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ort-web", "site"]


def test_missing_runtime_files_are_named(tmp_path, vendor):
    (vendor / "ort.wasm.min.js").unlink()
    with pytest.raises(InputFileError, match=r"ort\.wasm\.min\.js"):
        write_site(tmp_path / "site", spec(vendor))
    assert not (tmp_path / "site").exists()


def test_the_colour_map_is_opencvs_jet():
    lut = np.array(jet_colormap(), dtype=np.uint8)
    levels = np.array([[0, 64, 128, 200, 255]], np.uint8)
    np.testing.assert_array_equal(lut[levels[0]], cv2.applyColorMap(levels, cv2.COLORMAP_JET)[0][:, ::-1])


# ----------------------------------------------------------------------------------------------------------
# The page in headless Chromium


def exif_jpeg(path: Path, source: Path, orientation: int) -> Path:
    """A JPEG with an EXIF orientation tag, which browsers apply and camcaffe (OpenCV unchanged) does not."""
    image = cv2.imread(str(source))[:, :400]
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:])
    return path


@pytest.fixture(scope="module")
def browser_env(tmp_path_factory):
    """(browser page, base URL, sites root, converted demo model, scratch folder), one Chromium per module."""
    executable = cdp.chromium_path()
    if executable is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); browser checks skipped")
    vendor = web_vendor.default_dir()
    if web_vendor.missing_files(vendor):
        pytest.skip(
            f"onnxruntime-web {web_vendor.VERSION} files not found in {vendor}; run 'make web' (npm, network)"
        )
    scratch = tmp_path_factory.mktemp("web")
    model = scratch / "demo.onnx"
    convert_files(
        DEMO / "squeezenet_v1.0.prototxt",
        DEMO / "squeezenet_v1.0.caffemodel",
        model,
        ConvertOptions(),
        preprocessing=IMAGENET,
        labels_path=DEMO / "synset_words.txt",
    )
    sites = scratch / "sites"
    sites.mkdir()
    with cdp.serve(sites) as url, cdp.Browser.launch(scratch / "profile", executable=executable) as browser:
        page = browser.new_page()
        yield page, url, sites, model, scratch


def build(env, name: str, model: Path | None = None, *flags: str) -> str:
    page, url, sites, demo, _ = env
    assert main(["-q", "web", str(model or demo), "-o", str(sites / name), *flags]) == 0
    page.navigate(f"{url}/{name}/index.html?ep=wasm")
    page.wait_for("!!(window.camcaffe && window.camcaffe.ready)")
    assert page.evaluate("window.camcaffe.ready") is True, page.evaluate("window.camcaffe.error")
    return name


def explain(page: cdp.Page, photo: Path) -> dict:
    page.evaluate("window.__next = window.camcaffe.nextResult(); 0")
    page.set_files("#file", [photo.resolve()])
    return page.evaluate("window.__next")


def page_map(page: cdp.Page, result: dict) -> np.ndarray:
    data = base64.b64decode(page.evaluate("window.camcaffe.mapBase64()"))
    return np.frombuffer(data, np.float32).reshape(result["height"], result["width"])


def camcaffe_cam(env, photos: list[Path], out: str, model: Path | None = None, *flags: str):
    """`camcaffe cam` on the photos: (results.csv rows by file name, image-space maps by (name, class), the
    pipeline of the same command line, whose settings and net inputs are the command's)."""
    from camcaffe.cli.main import build_parser
    from camcaffe.engines.cam_run import CamOptions, build_job

    _, _, _, demo, scratch = env
    model = model or demo
    folder = scratch / out
    args = ["-q", "cam", str(model), *map(str, photos), "--out", str(folder), "--save-npy", "--no-overlays"]
    argv = [*args, "--top-k", "2", *flags]
    assert main(argv) == 0
    rows: dict[str, list[dict]] = {}
    with open(folder / "results.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(Path(row["image"]).name, []).append(row)
    job, session, _, _ = build_job(CamOptions.from_namespace(build_parser().parse_args(argv)))
    pipeline = job.make_pipeline(session)
    maps = {}
    for photo in photos:
        raw = np.load(folder / f"{photo.stem}_cam.npy")
        height, width = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED).shape[:2]
        image_maps = pipeline.to_image_space(raw, height, width)
        for row, image_map in zip(rows[photo.name], image_maps, strict=True):
            maps[(photo.name, int(row["class_index"]))] = image_map
    return rows, maps, pipeline


def check_against_cam(page: cdp.Page, photos: list[Path], rows: dict, maps: dict) -> dict[str, float]:
    """Every photo: the page's top-1 is camcaffe's, its map within MAP_TOLERANCE, its box within a pixel."""
    differences = {}
    for photo in photos:
        result = explain(page, photo)
        assert "error" not in result, result
        top1 = rows[photo.name][0]
        assert result["top"][0]["index"] == int(top1["class_index"]), (photo.name, result["top"], top1)
        assert result["top"][0]["probability"] == pytest.approx(
            float(top1["probability"]), rel=1e-4, abs=1e-6
        )
        difference = float(
            np.abs(page_map(page, result) - maps[(photo.name, int(top1["class_index"]))]).max()
        )
        assert difference < MAP_TOLERANCE, (photo.name, difference)
        expected_box = [int(top1[k]) for k in ("x0", "y0", "x1", "y1")]
        assert np.abs(np.array(result["box"]) - expected_box).max() <= 1, (
            photo.name,
            result["box"],
            expected_box,
        )
        differences[photo.name] = difference
    return differences


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_the_page_explains_photos_as_camcaffe_cam_does(browser_env, tmp_path):
    page = browser_env[0]
    build(browser_env, "warp")
    rows, maps, _ = camcaffe_cam(browser_env, PHOTOS, "cam-warp")
    differences = check_against_cam(page, PHOTOS, rows, maps)
    assert len(differences) >= 3
    # Measured ~1e-6 (float rounding): Debian's Chromium and OpenCV decode these JPEGs to the same bytes. More
    # means the decoders differ (bench/bench_web.py counts the differing bytes): find out why before relaxing.
    assert max(differences.values()) < 1e-5, f"the browser decodes differently from OpenCV? {differences}"
    # The second class: a click on its button shows camcaffe's map of it.
    photo = PHOTOS[0]
    explain(page, photo)
    second = int(rows[photo.name][1]["class_index"])
    result = page.evaluate(f"window.camcaffe.selectClass({second})")
    assert result["selected"]["index"] == second
    assert np.abs(page_map(page, result) - maps[(photo.name, second)]).max() < MAP_TOLERANCE
    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[0] > 200 and float(shot.astype(np.float64).var()) > 100.0
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_a_class_outside_the_top_k_runs_the_class_input(browser_env):
    page = browser_env[0]
    build(browser_env, "classes", None, "--top-k", "1")
    photo = DEMO / "images" / "skimage_coffee.jpg"
    _, maps, _ = camcaffe_cam(browser_env, [photo], "cam-class", None, "--class", "281")
    explain(page, photo)
    page.evaluate(
        "const o = document.getElementById('other'); o.value = '281'; o.dispatchEvent(new Event('change')); 0"
    )
    result = page.wait_for("window.camcaffe.result.selected.index === 281 && window.camcaffe.result")
    assert result["selected"]["index"] == 281 and result["selected"]["label"].startswith("tabby")
    reference = next(m for (name, index), m in maps.items() if index == 281)
    assert np.abs(page_map(page, result) - reference).max() < MAP_TOLERANCE
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
@pytest.mark.parametrize(
    "flags", [("--preset", "torchvision"), ("--resize", "crop")], ids=["torchvision", "crop"]
)
def test_the_torchvision_and_crop_resizes_match_too(browser_env, flags):
    page = browser_env[0]
    name = flags[1]
    build(browser_env, name, None, *flags)
    large = (
        browser_env[4] / "large.jpg"
    )  # a strong downscale: Pillow's filter spans ~13 pixels, its weights summed one by one
    if not large.exists():
        coffee = cv2.imread(str(DEMO / "images" / "skimage_coffee.jpg"))
        cv2.imwrite(str(large), cv2.resize(coffee, (1600, 1067), interpolation=cv2.INTER_CUBIC))
    photos = [p for p in PHOTOS if p.suffix == ".jpg"][:2] + [DEMO / "images" / "skimage_horse.png", large]
    rows, maps, _ = camcaffe_cam(browser_env, photos, f"cam-{name}", None, *flags)
    check_against_cam(page, photos, rows, maps)
    assert page.errors() == []


def page_input(page: cdp.Page, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(
        base64.b64decode(page.evaluate("window.camcaffe.inputBase64()")), np.float32
    ).reshape(shape)


def check_pillow_views_against_cam(
    page: cdp.Page, photos: list[Path], rows: dict, maps: dict, pipeline
) -> None:
    """With a Pillow filter the page's net input is camcaffe's to the bit (8-bit resize, float32 arithmetic of
    Transformer.preprocess_pixels), so its maps are camcaffe's to float rounding (< 1e-5), not MAP_TOLERANCE."""
    assert pipeline.views.pil_filter is not None
    differences = check_against_cam(page, photos, rows, maps)
    assert max(differences.values()) < 1e-5, differences
    for photo in photos:
        explain(page, photo)
        expected = pipeline.load(photo)[1][0]  # C, H, W
        if pipeline.layout == "nhwc":
            got = page_input(page, (*expected.shape[1:], expected.shape[0])).transpose(2, 0, 1)
        else:
            got = page_input(page, expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=photo.name)


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
@pytest.mark.parametrize(
    "flags",
    [("--preset", "keras-vgg"), ("--preset", "torchvision", "--resize-filter", "pil-bicubic")],
    ids=["keras-vgg", "torchvision-bicubic"],
)
def test_keras_and_torchvision_presets_with_pillow_filters_match_camcaffe_cam(browser_env, flags):
    page = browser_env[0]
    name = "-".join(flags[1::2])
    build(browser_env, name, None, *flags)
    photos = [
        DEMO / "images" / "caffe_cat.jpg",
        DEMO / "images" / "skimage_coffee.jpg",
        DEMO / "images" / "skimage_horse.png",
    ]
    rows, maps, pipeline = camcaffe_cam(browser_env, photos, f"cam-{name}", None, *flags)
    check_pillow_views_against_cam(page, photos, rows, maps, pipeline)
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_a_model_annotated_by_meta_preset_keras_vgg_is_honoured_without_flags(browser_env):
    page, _, _, demo, scratch = browser_env
    model = scratch / "demo_keras_vgg.onnx"
    shutil.copyfile(demo, model)
    assert main(["-q", "meta", str(model), "--preset", "keras-vgg"]) == 0
    build(browser_env, "meta-keras-vgg", model)
    assert "warp resize (pil-nearest)" in page.evaluate("document.getElementById('model-line').textContent")
    photos = [DEMO / "images" / "caffe_fish-bike.jpg", DEMO / "images" / "skimage_chelsea.png"]
    rows, maps, pipeline = camcaffe_cam(browser_env, photos, "cam-meta-keras-vgg", model)
    assert pipeline.views.resize_filter == "pil-nearest"
    check_pillow_views_against_cam(page, photos, rows, maps, pipeline)
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_every_pillow_filter_resizes_as_pil_resize_does(browser_env):
    """Each filter, up and down, both of Pillow 13's pass orders, on a real photo: the page's pixels are
    runtime/pil_resize.py's (which tests/runtime checks against Pillow itself)."""
    from camcaffe.runtime.pil_resize import PIL_FILTERS, pil_resize

    page = browser_env[0]
    build(browser_env, "filters", None, "--resize-filter", "pil-box")
    photo = DEMO / "images" / "skimage_coffee.jpg"  # 400 x 600
    assert "error" not in explain(page, photo)
    rgb = cv2.imread(str(photo))[:, :, ::-1]
    # (height, width): down both ways, vertical pass first (the height loses > 2x the width's loss), upscale, one
    # axis only, and a mixed up/down
    sizes = [(224, 224), (100, 590), (731, 1003), (400, 97), (37, 800)]
    for name in PIL_FILTERS:
        for size in sizes:
            data = base64.b64decode(
                page.evaluate(f"window.camcaffe.pilResizeBase64('{name}', {size[0]}, {size[1]})")
            )
            got = np.frombuffer(data, np.uint8).reshape(*size, 3)
            expected = pil_resize(np.ascontiguousarray(rgb), size, name)
            assert (got != expected).sum() == 0, (name, size, int((got != expected).sum()))
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_exif_orientation_small_and_progressive_photos_are_read_as_camcaffe_reads_them(browser_env):
    page, _, _, _, scratch = browser_env
    build(browser_env, "odd")
    cat = DEMO / "images" / "caffe_cat.jpg"
    small = scratch / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(cat)), (150, 110), interpolation=cv2.INTER_AREA))
    from PIL import Image

    progressive = scratch / "progressive.jpg"
    Image.open(DEMO / "images" / "skimage_coffee.jpg").save(progressive, "JPEG", quality=85, progressive=True)
    turned = [exif_jpeg(scratch / "turned6.jpg", cat, 6), exif_jpeg(scratch / "turned3.jpg", cat, 3)]
    photos = [*turned, small, progressive]
    rows, maps, _ = camcaffe_cam(browser_env, photos, "cam-odd")
    check_against_cam(page, photos, rows, maps)
    assert explain(page, photos[0])["orientation"] == 6
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_images_the_page_cannot_reproduce_are_refused_visibly(browser_env):
    page, _, _, _, scratch = browser_env
    build(browser_env, "refusals")
    deep = scratch / "deep.png"
    cv2.imwrite(str(deep), (np.arange(64 * 48 * 3).reshape(48, 64, 3) * 37 % 65535).astype(np.uint16))
    broken = scratch / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    for path, needle in ((deep, "16-bit PNG"), (broken, "cannot be decoded")):
        result = explain(page, path)
        assert needle in result["error"]
        assert page.evaluate("document.getElementById('message').hidden") is False
        assert needle in page.evaluate("document.getElementById('message').textContent")
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_googlenet_cam_an_inner_product_head_with_a_softmax(browser_env):
    from tests.helpers import shared_path

    folder = shared_path("golden", "googlenet_cam")
    page, _, _, _, scratch = browser_env
    model = scratch / "googlenet_cam.onnx"
    convert_files(
        folder / "deploy.prototxt",
        folder / "weights.caffemodel",
        model,
        ConvertOptions(),
        preprocessing=IMAGENET,
    )
    build(browser_env, "googlenet", model)
    photos = [p for p in PHOTOS if p.suffix == ".jpg"]
    rows, maps, _ = camcaffe_cam(browser_env, photos, "cam-googlenet", model)
    check_against_cam(page, photos, rows, maps)
    assert page.errors() == []


def nhwc_model(path: Path) -> Path:
    """A channels-last classifier (as Keras exports them): NHWC input, Transpose, conv, GAP, Gemm, Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    weights = {
        "W": rng.normal(0, 0.02, (6, 3, 3, 3)).astype(np.float32),
        "fcW": rng.normal(0, 1.0, (5, 6)).astype(np.float32),
        "fcB": rng.normal(0, 0.1, 5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["data"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "W"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fcW", "fcB"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 48, 40, 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_a_fixed_batch_a_mean_image_and_a_channels_last_input(browser_env):
    page, _, _, _, scratch = browser_env
    mean = np.random.default_rng(7).uniform(95, 130, (3, 256, 256)).astype(np.float32)
    batched = scratch / "batch2_mean.onnx"
    convert_files(
        DEMO / "squeezenet_v1.0.prototxt",
        DEMO / "squeezenet_v1.0.caffemodel",
        batched,
        ConvertOptions(batch=2),
        preprocessing=Preprocessing(mean_image=mean, raw_scale=255.0, channel_swap=[2, 1, 0]),
    )
    photos = [DEMO / "images" / "caffe_cat.jpg", DEMO / "images" / "skimage_chelsea.png"]
    for name, model in (("batch2_mean", batched), ("nhwc", nhwc_model(scratch / "nhwc.onnx"))):
        build(browser_env, name, model, "--top-k", "2")
        rows, maps, _ = camcaffe_cam(browser_env, photos, f"cam-{name}", model)
        check_against_cam(page, photos, rows, maps)
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_pillow_filters_with_a_mean_image_std_input_scale_crop_and_channels_last(browser_env):
    """The 8-bit path through every other Transformer step: a mean image (batch of 2), std and input scale, the
    crop view, channels-last; the page's net input is camcaffe's to the bit."""
    page, _, _, _, scratch = browser_env
    mean = np.random.default_rng(7).uniform(95, 130, (3, 256, 256)).astype(np.float32)
    batched = scratch / "batch2_mean_pil.onnx"
    convert_files(
        DEMO / "squeezenet_v1.0.prototxt",
        DEMO / "squeezenet_v1.0.caffemodel",
        batched,
        ConvertOptions(batch=2),
        preprocessing=Preprocessing(mean_image=mean, raw_scale=255.0, channel_swap=[2, 1, 0]),
    )
    photos = [DEMO / "images" / "caffe_cat.jpg", DEMO / "images" / "skimage_horse.png"]
    cases = (
        (
            "mean-crop-hamming",
            batched,
            ("--resize", "crop", "--resize-filter", "pil-hamming", "--std", "2,3,4"),
        ),
        (
            "nhwc-lanczos",
            nhwc_model(scratch / "nhwc_pil.onnx"),
            ("--resize-filter", "pil-lanczos", "--input-scale", "0.5"),
        ),
    )
    for name, model, flags in cases:
        build(browser_env, name, model, "--top-k", "2", *flags)
        rows, maps, pipeline = camcaffe_cam(browser_env, photos, f"cam-{name}", model, *flags)
        check_pillow_views_against_cam(page, photos, rows, maps, pipeline)
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_a_channels_last_feature_map_at_opset_20(browser_env):
    """A Keras-style head (N, h, w, C feature map, ReduceMean over axes 1, 2, MatMul + Add, float casts) in a
    model at opset 20: the page's model gets its CAM outputs in opset-20 form and maps as camcaffe cam does."""
    from tests.explain.test_cam_export import channels_last_model

    page, _, _, _, scratch = browser_env
    model = channels_last_model(scratch / "nhwc_feature.onnx", 20, size=(48, 40))
    photos = [DEMO / "images" / "caffe_cat.jpg", DEMO / "images" / "skimage_chelsea.png"]
    build(browser_env, "nhwc_feature", model, "--top-k", "2")
    rows, maps, _ = camcaffe_cam(browser_env, photos, "cam-nhwc_feature", model)
    check_against_cam(page, photos, rows, maps)
    assert page.errors() == []


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_a_cross_origin_isolated_page_runs_webassembly_threads_with_the_same_maps(browser_env):
    page, _, sites, _, _ = browser_env
    build(browser_env, "isolated")
    photos = [DEMO / "images" / "skimage_coffee.jpg"]
    rows, maps, _ = camcaffe_cam(browser_env, photos, "cam-isolated")
    with cdp.serve(sites, headers=cdp.ISOLATION_HEADERS) as url:
        page.navigate(f"{url}/isolated/index.html?ep=wasm")
        page.wait_for("!!(window.camcaffe && window.camcaffe.ready)")
        assert page.evaluate("window.camcaffe.ready") is True, page.evaluate("window.camcaffe.error")
        assert page.evaluate("self.crossOriginIsolated") is True
        assert page.evaluate("window.camcaffe.threads") == min(
            4, page.evaluate("navigator.hardwareConcurrency")
        )
        check_against_cam(page, photos, rows, maps)
        assert page.errors() == []


WEBGPU_FLAGS = (
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-webgpu-adapter=swiftshader",
    "--enable-unsafe-swiftshader",
)


@pytest.mark.slow
@pytest.mark.xdist_group("web-browser")  # one Chromium and one demo conversion per worker
def test_the_webgpu_path_on_swiftshader_gives_the_same_classes_and_maps(browser_env):
    """WebGPU on Chromium's CPU emulation (SwiftShader): the same page code and runtime build a GPU would use."""
    _, _, sites, _, scratch = browser_env
    build(browser_env, "webgpu")
    photos = [DEMO / "images" / "caffe_cat.jpg"]  # SwiftShader compiles every shader on the CPU: ~1 min
    rows, maps, _ = camcaffe_cam(browser_env, photos, "cam-webgpu")
    with cdp.serve(sites) as url, cdp.Browser.launch(scratch / "gpu-profile", *WEBGPU_FLAGS) as browser:
        page = browser.new_page()
        page.navigate(f"{url}/webgpu/index.html?ep=webgpu")
        page.wait_for("!!(window.camcaffe && window.camcaffe.ready)")
        assert page.evaluate("window.camcaffe.ready") is True, page.evaluate("window.camcaffe.error")
        adapter = page.evaluate("navigator.gpu ? navigator.gpu.requestAdapter().then(a => !!a) : false")
        if not adapter:
            pytest.skip(
                # not worded with the browser's name: tests/conftest.py fails such skips under CI=true
                "this browser build offers no WebGPU adapter, not even SwiftShader's; the WebGPU path is untested"
            )
        assert page.evaluate("window.camcaffe.ep") == "webgpu"
        started = time.perf_counter()
        differences = check_against_cam(page, photos, rows, maps)
        print(
            f"WebGPU (SwiftShader): map difference {max(differences.values()):.2e}, "
            f"{time.perf_counter() - started:.1f} s for {len(photos)} photo(s)"
        )
        assert page.errors() == []
