"""The legacy pycaffe surface against bare ONNX Runtime: SqueezeNet v1.0, one batch of 50, peak memory (VmHWM)
and the median time of a forward, in separate processes:

- ort: ModelSession on the converted model, outputs only (the bare run);
- outputs: caffe.Net(...).forward(), reading only the output (lazy blob fetching leaves the rest unfetched);
- all: caffe.Net(...).forward(), then every blob read (what every forward cost before lazy fetching).

Usage: bench_pycaffe.py [--batch 50] [--repeats 3]"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MODES = ("ort", "outputs", "all")


def child(mode: str, batch: int, repeats: int) -> dict:
    C.set_threads()
    prototxt, caffemodel = C.model_files("squeezenet_v1.0")
    x = np.random.default_rng(0).uniform(-128, 128, (batch, 3, 227, 227)).astype(np.float32)
    if mode == "ort":
        from camcaffe.runtime.session import ModelSession

        session = ModelSession(C.converted_model("squeezenet_v1.0"), provider="cpu")
        name = session.input_name if hasattr(session, "input_name") else "data"

        def forward() -> None:
            session.run({name: x}, None)

    else:
        import camcaffe as caffe

        net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
        net.blobs["data"].reshape(*x.shape)

        def forward() -> None:
            net.forward(data=x)
            if mode == "all":
                for blob in net.blobs.values():
                    _ = blob.data

    forward()  # warm-up: sessions, arenas
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return {"mode": mode, "seconds": statistics.median(times), "peak_mb": C.proc_status_kb("VmHWM") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=MODES)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.repeats)))
        return
    C.require_shared("bench_pycaffe.py")
    rows = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--child", mode, "--batch", str(args.batch)]
        command += ["--repeats", str(args.repeats)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(output.strip().splitlines()[-1])
    bare = rows["ort"]
    lines = [
        f"SqueezeNet v1.0, batch {args.batch}, median of {args.repeats} forwards (after one warm-up)",
        "",
        "| run | time (s) | x bare | peak RSS (MB) | x bare |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        row = rows[mode]
        lines.append(
            f"| {mode} | {row['seconds']:.3f} | {row['seconds'] / bare['seconds']:.2f} | "
            f"{row['peak_mb']:.0f} | {row['peak_mb'] / bare['peak_mb']:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    C.write_results("pycaffe", rows, text)


if __name__ == "__main__":
    main()
