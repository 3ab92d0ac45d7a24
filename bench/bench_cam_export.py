"""In-graph CAM (issue 17): bytes out of the ONNX Runtime session per image and time per batch, `camcaffe cam`'s
pipeline on a plain model (fetches the feature map, computes the maps in numpy) against the same model written
with `--with-cam 5` (fetches the top-5 classes, probabilities and maps).

Models: the demo SqueezeNet v1.0 (class-conv head, no Softmax: the probability vector is fetched too, to
rank as the plain path does) and, when ../shared is there, GoogLeNet-CAM (InnerProduct head with a Softmax).
Images: the demo photos, repeated to --batch. Median of --runs batches, after one warm-up.

    python bench/bench_cam_export.py [--runs 10] [--batch 8] [--provider auto|cpu|cuda]"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import THREADS, write_results  # noqa: E402
from camcaffe.convert.api import Preprocessing, convert_files  # noqa: E402
from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata  # noqa: E402
from camcaffe.explain.cam_export import export_cam_file  # noqa: E402
from camcaffe.runtime.session import ModelSession  # noqa: E402

DEMO = ROOT / "examples" / "demo"
SHARED = ROOT.parent / "shared"
IMAGENET = Preprocessing(mean=[104.0, 117.0, 123.0], raw_scale=255.0, channel_swap=[2, 1, 0])


def models() -> list[tuple[str, Path, Path]]:
    found = [
        ("SqueezeNet v1.0 (demo)", DEMO / "squeezenet_v1.0.prototxt", DEMO / "squeezenet_v1.0.caffemodel")
    ]
    golden = SHARED / "golden" / "googlenet_cam"
    if golden.exists():
        found.append(("GoogLeNet-CAM", golden / "deploy.prototxt", golden / "weights.caffemodel"))
    return found


class Counting:
    """Wraps ModelSession.run: the bytes of every array it hands back."""

    def __init__(self, session: ModelSession):
        self.session, self.original, self.bytes = session, session.run, 0

    def __call__(self, feeds, outputs=None):
        values = self.original(feeds, outputs)
        self.bytes += sum(np.asarray(v).nbytes for v in values.values())
        return values


def pipeline_for(session: ModelSession, batch: int):
    """A top-5 pipeline (no overlays) and one prepared batch of the demo photos."""
    preprocess, _ = preprocess_from_metadata(session, Preprocess())
    pipeline = CamPipeline(session, preprocess, CamSettings(top_k=5, write_overlays=False))
    photos = sorted(p for p in (DEMO / "images").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    paths = [photos[i % len(photos)] for i in range(batch)]
    return pipeline, pipeline.prepare(paths, [f"{p.stem}_{i}" for i, p in enumerate(paths)])


def measure(paths: list[Path], provider: str, batch: int, runs: int) -> list[dict]:
    """Per model file: bytes out per image, median ms per batch (the files' batches interleaved)."""
    setups = []
    for path in paths:
        session = ModelSession(path, provider, threads=THREADS)
        counter = Counting(session)
        session.run = counter  # type: ignore[method-assign]
        pipeline, prepared = pipeline_for(session, batch)
        pipeline.finish_batch(prepared, None)  # warm-up: session creation
        counter.bytes = 0
        setups.append((session, counter, pipeline, prepared, []))
    for _ in range(runs):
        for _session, _counter, pipeline, prepared, times in setups:
            started = time.perf_counter()
            pipeline.finish_batch(prepared, None)
            times.append(time.perf_counter() - started)
    return [
        {
            "fetches": "in-graph maps" if pipeline.in_graph is not None else "feature map",
            "bytes_per_image": counter.bytes / (runs * batch),
            "ms_per_batch": statistics.median(times) * 1e3,
            "provider": session.provider_used,
        }
        for session, counter, pipeline, prepared, times in setups
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    lines = [
        f"batch {args.batch}, median of {args.runs} (interleaved), top-5, {THREADS} threads, provider {args.provider}",
        "",
        "| model | fetches | bytes/image | ms/batch | provider |",
        "|---|---|---:|---:|---|",
    ]
    figures: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, prototxt, weights in models():
            plain, with_cam = Path(folder) / "plain.onnx", Path(folder) / "with_cam.onnx"
            convert_files(prototxt, weights, plain, preprocessing=IMAGENET)
            export_cam_file(plain, with_cam, 5)
            rows = figures[name] = measure([plain, with_cam], args.provider, args.batch, args.runs)
            for row in rows:
                lines.append(
                    f"| {name} | {row['fetches']} | {row['bytes_per_image']:,.0f} | {row['ms_per_batch']:.1f} | "
                    f"{row['provider']} |"
                )
            ratio = rows[0]["bytes_per_image"] / rows[1]["bytes_per_image"]
            speed = rows[0]["ms_per_batch"] / rows[1]["ms_per_batch"]
            lines.append(f"| {name} | ratio | {ratio:.0f}x fewer | {speed:.2f}x faster | |")
    markdown = "\n".join(lines)
    print(markdown)
    write_results("cam_export", {"batch": args.batch, "runs": args.runs, "models": figures}, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
