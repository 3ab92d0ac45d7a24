"""Start-up cost of small jobs: `camcaffe cam` end to end against a minimal onnxruntime script doing decode +
resize + inference on the same model and photos (issue 14: 1 image <= 2x the script's wall time, 96 images
>= 0.9x its throughput, i.e. camcaffe's wall time <= script's / 0.9).

Both run as fresh processes (what a user or a Makefile pays), single model = the embedded demo SqueezeNet v1.0
(examples/demo), photos = the demo's photos repeated. Median of --runs runs each; ratios from the medians.

    python bench/bench_startup.py [--runs 5]"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"

MINIMAL = r"""
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

model, paths = sys.argv[1], sys.argv[2:]
options = ort.SessionOptions()
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
_, _, height, width = session.get_inputs()[0].shape
mean = np.array([104.0, 117.0, 123.0], np.float32)
for start in range(0, len(paths), 8):
    batch = []
    for path in paths[start : start + 8]:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        batch.append((image - mean).transpose(2, 0, 1))
    probabilities = session.run(None, {name: np.stack(batch)})[0]
    for row in probabilities.reshape(len(batch), -1):
        print(int(row.argmax()))
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_startup: {' '.join(command[:4])} ... failed:\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    photos = sorted(p for p in (DEMO / "images").iterdir() if p.suffix in (".jpg", ".png"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "squeezenet.onnx"
        subprocess.run(
            [sys.executable, "-m", "camcaffe.cli", "-q", "convert", str(DEMO / "squeezenet_v1.0.prototxt")]
            + [str(DEMO / "squeezenet_v1.0.caffemodel"), "-o", str(model)]
            + ["--mean", "104,117,123", "--raw-scale", "255", "--channel-swap", "2,1,0"],
            check=True,
        )
        script = work / "minimal.py"
        script.write_text(MINIMAL)
        many = work / "many"
        many.mkdir()
        for index in range(96):
            source = photos[index % len(photos)]
            shutil.copy(source, many / f"{index:03d}{source.suffix}")
        one = [str(photos[0])]
        figures = {}
        for label, paths, folder in (
            ("1 image", one, one[0]),
            ("96 images", sorted(map(str, many.iterdir())), str(many)),
        ):
            ours, theirs = [], []
            for run in range(args.runs):
                out = work / f"out_{label[:2].strip()}_{run}"
                theirs.append(timed([sys.executable, str(script), str(model), *paths]))
                ours.append(
                    timed(
                        [
                            sys.executable,
                            "-m",
                            "camcaffe.cli",
                            "-q",
                            "cam",
                            str(model),
                            folder,
                            "--out",
                            str(out),
                        ]
                    )
                )
            figures[label] = (statistics.median(ours), statistics.median(theirs))
    one_ours, one_theirs = figures["1 image"]
    many_ours, many_theirs = figures["96 images"]
    table = "\n".join(
        [
            "| job | camcaffe cam (s) | minimal onnxruntime script (s) | ratio | target |",
            "|---|---|---|---|---|",
            f"| 1 image | {one_ours:.2f} | {one_theirs:.2f} | {one_ours / one_theirs:.2f}x the script's time | <= 2x |",
            f"| 96 images | {many_ours:.2f} | {many_theirs:.2f} | {many_theirs / many_ours:.2f}x the script's "
            "throughput | >= 0.9x |",
            "",
            f"median of {args.runs} runs each, fresh processes; camcaffe also writes overlays and results.csv",
        ]
    )
    print(table)
    sys.path.insert(0, str(ROOT / "bench"))
    import _common as C

    targets = [
        C.target(
            "1 image end to end vs minimal ORT script",
            one_ours / one_theirs,
            "<= 2x",
            one_ours / one_theirs <= 2.0,
            "time ratio",
        ),
        C.target(
            "96 images vs minimal ORT script",
            many_theirs / many_ours,
            ">= 0.9x",
            many_theirs / many_ours >= 0.9,
            "throughput ratio",
        ),
    ]
    C.write_results("startup", {"figures": figures, "targets": targets}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
