"""`camcaffe web` (issue 17): the page in headless Chromium (WebAssembly, one thread) against `camcaffe cam` on the
same photos, with the demo SqueezeNet v1.0.

* page load: from navigation to a ready session (the page's own clock: config, runtime script, WebAssembly
  compile, model fetch and session creation), cold (new browser profile) and warm (reloads, HTTP cache on);
* per image in the page: decode, preprocess, model, map + box (the page's clock), median of --repeat uploads of
  each photo after one warm-up; and the wall time from the file upload to the result, seen from outside;
* `camcaffe cam`: the pipeline on one image at a time (decode, preprocess, model, map, box; no overlay files),
  onnxruntime with 1 and 2 threads, median of --repeat; and the whole command on the five photos (start-up
  included).

    python bench/bench_web.py [--repeat 5] [--screenshot docs/web_demo.png]"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_results  # noqa: E402
from camcaffe.cli.main import main as camcaffe  # noqa: E402
from camcaffe.convert.api import Preprocessing, convert_files  # noqa: E402
from camcaffe.output import web_vendor  # noqa: E402
from tests import cdp  # noqa: E402

DEMO = ROOT / "examples" / "demo"
PHOTOS = sorted(p for p in (DEMO / "images").iterdir() if p.suffix in (".jpg", ".png"))
IMAGENET = Preprocessing(mean=[104.0, 117.0, 123.0], raw_scale=255.0, channel_swap=[2, 1, 0])


def page_figures(site: Path, profile: Path, repeat: int, screenshot: Path | None) -> dict:
    with cdp.serve(site.parent) as url, cdp.Browser.launch(profile) as browser:
        page = browser.new_page(1100, 700)
        loads = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            page.navigate(f"{url}/{site.name}/index.html?ep=wasm")
            page.wait_for("!!(window.camcaffe && window.camcaffe.ready)")
            assert page.evaluate("window.camcaffe.ready") is True, page.evaluate("window.camcaffe.error")
            loads.append(
                {
                    "page_ms": page.evaluate("window.camcaffe.loadMs"),
                    "wall_ms": (time.perf_counter() - started) * 1e3,
                }
            )
        per_photo, decodings = {}, {}
        for photo in PHOTOS:
            runs = []
            for _ in range(repeat + 1):
                page.evaluate("window.__next = window.camcaffe.nextResult(); 0")
                started = time.perf_counter()
                page.set_files("#file", [photo])
                result = page.evaluate("window.__next")
                wall = (time.perf_counter() - started) * 1e3
                assert "error" not in result, result
                runs.append({**result["timings"], "wall": wall})
            decoded = np.frombuffer(
                base64.b64decode(page.evaluate("window.camcaffe.photoBase64()")), np.uint8
            )
            decodings[photo.name] = decode_difference(photo, decoded)
            runs = runs[1:]  # the first upload of each photo warms the page's code paths
            per_photo[photo.name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        if screenshot is not None:
            page.evaluate("window.__next = window.camcaffe.nextResult(); 0")
            page.set_files("#file", [DEMO / "images" / "caffe_cat.jpg"])
            page.evaluate("window.__next")
            save_small_png(page.screenshot(), screenshot)
        errors = page.errors()
    return {
        "load_cold_ms": loads[0]["page_ms"],
        "load_warm_ms": statistics.median(x["page_ms"] for x in loads[1:]),
        "load_cold_wall_ms": loads[0]["wall_ms"],
        "per_photo": per_photo,
        "console_errors": errors,
        "decoding_vs_opencv": decodings,
    }


def save_small_png(png: bytes, path: Path) -> None:
    """The screenshot with an adaptive 256-colour palette: ~350 KB become ~80 KB for docs/."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        path, optimize=True
    )


def decode_difference(photo: Path, decoded: np.ndarray) -> dict:
    """The page's decoded RGB bytes against camcaffe's (OpenCV, IMREAD_UNCHANGED, alpha dropped)."""
    import cv2

    reference = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED)[:, :, 2::-1].reshape(-1)
    difference = np.abs(decoded.astype(np.int16) - reference.astype(np.int16))
    return {
        "bytes": int(reference.size),
        "differing": int((difference > 0).sum()),
        "max": int(difference.max()),
    }


def pipeline_figures(model: Path, repeat: int, threads: int) -> dict:
    from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.runtime.session import ModelSession

    session = ModelSession(model, provider="cpu", threads=threads)
    settings, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamPipeline(session, settings, CamSettings(top_k=5, write_overlays=False))
    per_photo = {}
    for photo in PHOTOS:
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            pipeline.process([photo], [photo.stem], None)
            times.append((time.perf_counter() - started) * 1e3)
        per_photo[photo.name] = statistics.median(times[1:])
    return per_photo


def command_seconds(model: Path, out: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "camcaffe.cli",
            "-q",
            "cam",
            str(model),
            *map(str, PHOTOS),
            "--out",
            str(out),
            "--top-k",
            "5",
            "--no-overlays",
            "--provider",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="also save the page after explaining caffe_cat.jpg")
    args = parser.parse_args()
    if cdp.chromium_path() is None or web_vendor.missing_files(web_vendor.default_dir()):
        print(
            "bench_web.py: SKIPPED - needs chromium on PATH and onnxruntime-web in "
            f"{web_vendor.default_dir()} ('make web' fetches it)",
            file=sys.stderr,
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="camcaffe-bench-web-") as scratch:
        folder = Path(scratch)
        model = folder / "demo.onnx"
        convert_files(
            DEMO / "squeezenet_v1.0.prototxt",
            DEMO / "squeezenet_v1.0.caffemodel",
            model,
            preprocessing=IMAGENET,
            labels_path=DEMO / "synset_words.txt",
        )
        site = folder / "site"
        assert camcaffe(["-q", "web", str(model), "-o", str(site), "--title", "SqueezeNet v1.0 (demo)"]) == 0
        page = page_figures(site, folder / "profile", args.repeat, args.screenshot)
        python = {threads: pipeline_figures(model, args.repeat, threads) for threads in (1, 2)}
        command = command_seconds(model, folder / "cam")
    lines = [
        f"Demo SqueezeNet v1.0 (227x227), top-5, {len(PHOTOS)} demo photos, median of {args.repeat} after a warm-up; "
        "headless Chromium, onnxruntime-web "
        f"{web_vendor.VERSION} WebAssembly, 1 thread (not cross-origin isolated); camcaffe cam on the CPU EP.",
        "",
        f"Page load (navigation to a ready session): cold {page['load_cold_ms']:.0f} ms (new profile), warm "
        f"{page['load_warm_ms']:.0f} ms (reload, HTTP cache).",
        "",
        "| photo | page: decode | preprocess | model | map + box | total (page) | upload to result | camcaffe cam pipeline, 1 thread | 2 threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for photo in PHOTOS:
        p = page["per_photo"][photo.name]
        lines.append(
            f"| {photo.name} | {p['decode']:.1f} | {p['preprocess']:.1f} | {p['inference']:.1f} | {p['map']:.1f} | "
            f"{p['total']:.1f} | {p['wall']:.1f} | {python[1][photo.name]:.1f} | {python[2][photo.name]:.1f} |"
        )
    total = statistics.median(page["per_photo"][p.name]["total"] for p in PHOTOS)
    lines += [
        "",
        f"Median per image: page {total:.0f} ms, camcaffe cam pipeline {statistics.median(python[1].values()):.0f} ms "
        f"(1 thread) / {statistics.median(python[2].values()):.0f} ms (2 threads); the whole `camcaffe cam` command on "
        f"the {len(PHOTOS)} photos (start-up included): {command:.2f} s. Console errors: {len(page['console_errors'])}.",
        "",
        "Decoded pixels, page (Chromium, createImageBitmap without colour conversion) vs camcaffe (OpenCV): "
        + "; ".join(
            f"{name} {d['differing']} of {d['bytes']} bytes differ (max {d['max']})"
            for name, d in page["decoding_vs_opencv"].items()
        )
        + ".",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    write_results(
        "web",
        {"page": page, "camcaffe_cam_ms": python, "command_s": command, "repeat": args.repeat},
        markdown,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
