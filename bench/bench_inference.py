"""CPU inference throughput and latency: bare ONNX Runtime, the camcaffe pipeline, and OpenCV dnn.

For GoogLeNet-CAM and SqueezeNet v1.0 at batch 1, 8 and 32, all with THREADS (2) threads:
  (a) bare onnxruntime InferenceSession on ready float32 tensors (the camcaffe conversion);
  (b) camcaffe CamPipeline.process: decode, preprocess, inference, CAM, box (no rendering);
  (c) (b) plus the overlay PNGs written to disk;
  (d) OpenCV 4 dnn (readNetFromCaffe) running the ORIGINAL Caffe files on the same tensors as (a);
  (e) extra, end to end the OpenCV way: cv2.imread + cv2.dnn.blobFromImages (cv2.resize, mean) + (d)'s net.
Photos from ../shared/data/images are copied to a temporary folder and cycled to fill the batches.
Also: FLOPs per image counted from the ONNX graph (Conv, Gemm, MatMul) x images/s against the machine's
estimated FP32 peak, and the CUDA check (no GPU figures are invented when CUDA cannot run)."""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCHES = (1, 8, 32)
MIN_IMAGES = 96  # per (model, mode, batch): at least this many images ...
MIN_BATCHES = 8  # ... and this many timed batches
WARMUP_BATCHES = 2
PAUSE_S = 0.01  # untimed pause between interleaved steps: lets the previous engine's spinning threads go idle


# ----------------------------------------------------------------------------------------------------------
# FLOPs and peak


def count_macs(onnx_path: Path) -> dict:
    """Multiply-accumulates per image of Conv, Gemm and MatMul nodes, from the graph with inferred shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[:1]:
        dim.ClearField("dim_param")
        dim.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[value.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    per_op: dict[str, int] = {}
    unknown = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        if node.op_type == "Conv":
            weight = shapes.get(node.input[1])
            if out is None or weight is None:
                unknown.append(node.name)
                continue
            macs = math.prod(out) * math.prod(weight[1:])  # each output: C_in/group * kh * kw MACs
        else:
            a = shapes.get(node.input[0])
            if out is None or a is None:
                unknown.append(node.name)
                continue
            transposed_a = any(at.name == "transA" and at.i for at in node.attribute)
            inner = a[-2] if transposed_a else a[-1]
            macs = math.prod(out) * inner
        per_op[node.op_type] = per_op.get(node.op_type, 0) + macs
    total = sum(per_op.values())
    return {
        "macs": total,
        "gflops": round(2 * total / 1e9, 3),
        "by_op_macs": per_op,
        "unshaped_nodes": unknown,
    }


def cpu_peak() -> dict:
    """Estimated FP32 peak from /proc/cpuinfo (SIMD width x FMA pipes x cores x clock), with the assumption."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags, mhz, model, vendor, family = set(), 0.0, platform.processor(), "", 0
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and not mhz:
            mhz = float(value)
        elif key == "model name":
            model = value
        elif key == "vendor_id":
            vendor = value
        elif key == "cpu family" and not family:
            family = int(value)
    import os

    cores = len(os.sched_getaffinity(0))
    if "avx512f" in flags and vendor == "AuthenticAMD" and family >= 0x1A:
        per_cycle, why = (
            64,
            "AVX-512 on AMD Zen 5 (family 1Ah): 2 x 512-bit FMA pipes = 2x16 FP32 FMA = 64 FLOP/cycle",
        )
    elif "avx512f" in flags and vendor == "AuthenticAMD":
        per_cycle, why = 32, "AVX-512 on AMD Zen 4 (double-pumped 256-bit): 32 FP32 FLOP/cycle"
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512 with 2 FMA units (server Intel): 64 FP32 FLOP/cycle"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, why = 32, "AVX2 + FMA, 2 x 256-bit FMA pipes: 32 FP32 FLOP/cycle"
    else:
        per_cycle, why = 8, "SSE only: 8 FP32 FLOP/cycle"
    peak = per_cycle * cores * mhz * 1e6
    return {
        "cpu": model,
        "cores": cores,
        "mhz": mhz,
        "flop_per_cycle_per_core": per_cycle,
        "peak_gflops": round(peak / 1e9, 1),
        "assumption": f"{why}; x {cores} cores x {mhz:.0f} MHz ('cpu MHz' of /proc/cpuinfo, a VM: "
        "no turbo information, the clock may be higher under load)",
    }


# An FMA throughput loop in C: 12 independent chains of vector FMAs per thread, one thread per core; and a
# dependent integer-add chain (1 add per cycle) that gives the clock the cores really run at.
FMA_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define SET(x) _mm512_set1_ps(x)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define LANES 16
#else
typedef __m256 vec;
#define SET(x) _mm256_set1_ps(x)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define LANES 8
#endif
#define ROUNDS 400000000L
volatile float sink[64];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *run(void *arg) {
  long id = (long)arg;
  vec a[12];
  for (int k = 0; k < 12; k++) a[k] = SET(1.0f + 0.1f * k + id);
  vec m = SET(0.999999f), c = SET(1e-7f);
  for (long i = 0; i < ROUNDS; i++) {
    a[0] = FMA(a[0], m, c); a[1] = FMA(a[1], m, c); a[2] = FMA(a[2], m, c); a[3] = FMA(a[3], m, c);
    a[4] = FMA(a[4], m, c); a[5] = FMA(a[5], m, c); a[6] = FMA(a[6], m, c); a[7] = FMA(a[7], m, c);
    a[8] = FMA(a[8], m, c); a[9] = FMA(a[9], m, c); a[10] = FMA(a[10], m, c); a[11] = FMA(a[11], m, c);
  }
  float out[LANES], total = 0;
  for (int k = 0; k < 12; k++) { memcpy(out, &a[k], sizeof out); total += out[0]; }
  sink[id] = total;
  return 0;
}
static double add_chain(void) {  /* seconds for 1e9 dependent adds = 1e9 cycles */
  long x = 0; double t = now();
  for (long i = 0; i < 1000000000L; i++) __asm__ volatile("add $1, %0" : "+r"(x));
  return now() - t;
}
int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double chain = add_chain(), again = add_chain();
  if (again < chain) chain = again;
  pthread_t p[64]; double t = now();
  for (long i = 0; i < threads; i++) pthread_create(&p[i], 0, run, (void *)i);
  for (int i = 0; i < threads; i++) pthread_join(p[i], 0);
  double elapsed = now() - t;
  printf("{\"gflops\": %.1f, \"clock_ghz\": %.3f, \"lanes\": %d}\n",
         (double)threads * ROUNDS * 12 * LANES * 2 / elapsed / 1e9, 1.0 / chain, LANES);
  return 0;
}
"""


def measured_peak(threads: int = C.THREADS) -> dict:
    """FP32 FMA throughput measured with the C loop above (needs a C compiler), and the running clock."""
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    isa = ["-mavx512f", "-mfma"] if "avx512f" in flags else ["-mavx2", "-mfma"]
    if compiler is None or "fma" not in flags:
        return {"measured": False, "why": "no C compiler or no FMA instructions"}
    C.CACHE.mkdir(parents=True, exist_ok=True)
    source, binary = C.CACHE / "fma_peak.c", C.CACHE / "fma_peak"
    source.write_text(FMA_SOURCE)
    built = subprocess.run(
        [compiler, "-O2", *isa, "-pthread", str(source), "-o", str(binary)], capture_output=True
    )
    if built.returncode != 0:
        return {"measured": False, "why": built.stderr.decode()[-200:]}
    import json

    out = json.loads(subprocess.run([str(binary), str(threads)], capture_output=True, text=True).stdout)
    return {"measured": True, "threads": threads, "isa": " ".join(isa), **out}


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """What numpy's BLAS reaches on a large float32 matrix product (it uses both cores by default): an
    attainable-peak reference next to the paper peak."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ----------------------------------------------------------------------------------------------------------
# Runners


def bare_session(onnx_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = C.THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def opencv_net(name: str):
    import cv2

    prototxt, caffemodel = C.model_files(name)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def batch_count(batch: int) -> int:
    return max(MIN_BATCHES, math.ceil(MIN_IMAGES / batch))


def timed(step, batch: int) -> list[float]:
    """Run step(i) for warm-up then timed batches; per-batch wall times in seconds."""
    for i in range(WARMUP_BATCHES):
        step(i)
    latencies = []
    for i in range(batch_count(batch)):
        start = time.perf_counter()
        step(WARMUP_BATCHES + i)
        latencies.append(time.perf_counter() - start)
    return latencies


def interleaved(steps: dict, batch: int) -> tuple[dict[str, list[float]], C.CpuMonitor]:
    """Round-robin over the modes, one batch each per round, so that background load on a shared machine
    hits every mode alike; per-batch wall times per mode, and the CPU use of other processes meanwhile."""
    for i in range(WARMUP_BATCHES):
        for step in steps.values():
            step(i)
    latencies: dict[str, list[float]] = {mode: [] for mode in steps}
    with C.CpuMonitor() as monitor:
        for i in range(batch_count(batch)):
            for mode, step in steps.items():
                time.sleep(PAUSE_S)
                start = time.perf_counter()
                step(WARMUP_BATCHES + i)
                latencies[mode].append(time.perf_counter() - start)
    return latencies, monitor


def bench_model(name: str, paths: list[Path], overlay_dir: Path) -> dict:
    import cv2

    onnx_path = C.converted_model(name)
    _, pipeline = C.make_pipeline(onnx_path, write_overlays=False)
    _, pipeline_overlays = C.make_pipeline(onnx_path, write_overlays=True)
    pool = worker_pool(onnx_path)
    session = bare_session(onnx_path)
    input_name = session.get_inputs()[0].name
    net = opencv_net(name)
    tensors = [pipeline.load(p)[1][0] for p in paths]  # camcaffe's preprocessing of each distinct photo
    height, width = tensors[0].shape[1:]
    stems = [p.stem for p in paths]

    def batch_of(items: list, batch: int, i: int) -> list:
        return C.cycle(items, batch, start=i * batch)

    # the same tensors for (a) and (d): check that the two engines agree on them
    check = np.stack(batch_of(tensors, 4, 0))
    ort_prob = session.run(None, {input_name: check})[0].reshape(4, -1)
    net.setInput(check)
    cv_prob = net.forward().reshape(4, -1)
    agreement = {
        "max_abs_diff_final_output": float(np.abs(ort_prob - cv_prob).max()),
        "top1_equal": bool((ort_prob.argmax(1) == cv_prob.argmax(1)).all()),
    }

    rows = []
    for batch in BATCHES:
        ready = [np.stack(batch_of(tensors, batch, i)) for i in range(len(paths))]

        def step_a(i, ready=ready):
            session.run(None, {input_name: ready[i % len(ready)]})

        def step_b(i, batch=batch):
            pipeline.process(batch_of(paths, batch, i), batch_of(stems, batch, i), out_dir=None)

        def step_b_workers(i, batch=batch):
            # what `camcaffe cam` runs on a CPU: one single-threaded pipeline per core, a batch each
            rounds = [
                (batch_of(paths, batch, i * pool.size + k), batch_of(stems, batch, i * pool.size + k))
                for k in range(pool.size)
            ]
            for _ in pool.map(rounds, None):
                pass

        def step_c(i, batch=batch):
            pipeline_overlays.process(
                batch_of(paths, batch, i), batch_of(stems, batch, i), out_dir=overlay_dir
            )

        def step_d(i, ready=ready):
            net.setInput(ready[i % len(ready)])
            net.forward()

        def step_e(i, batch=batch):
            # what an OpenCV user writes: imread + blobFromImages (cv2.resize, mean) + forward
            images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in batch_of(paths, batch, i)]
            net.setInput(
                cv2.dnn.blobFromImages(images, 1.0, (width, height), (104.0, 117.0, 123.0), False, False)
            )
            net.forward()

        steps = {
            "a_bare_ort": step_a,
            "b_pipeline": step_b,
            "b_workers": step_b_workers,
            "c_pipeline_overlays": step_c,
            "d_opencv_dnn": step_d,
            "e_opencv_imread_blob": step_e,
        }
        quiet_before = C.wait_for_quiet()
        latencies, monitor = interleaved(steps, batch)
        for mode, values in latencies.items():
            stats = C.latency_stats(values, batch * (pool.size if mode == "b_workers" else 1))
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    "batch": batch,
                    **stats,
                    "other_procs_cpu_pct": monitor.other_pct,
                    "other_procs_cpu_pct_before": quiet_before,
                }
            )
            print(
                f"  {name:16s} {mode:20s} batch {batch:2d}: {stats['images_per_s']:7.2f} img/s  "
                f"p50 {stats['p50_ms']:8.2f} ms  p95 {stats['p95_ms']:8.2f} ms  "
                f"(other processes {monitor.other_pct} % CPU)",
                flush=True,
            )
    return {"rows": rows, "flops": count_macs(onnx_path), "ort_vs_opencv": agreement}


def jpeg_context(name: str, photo_dir: Path) -> dict:
    """(b-workers)/(a) at batch 8 on the same photos re-encoded as JPEG (quality 95), ImageNet's format:
    how much of the gap is PNG decoding (zlib) rather than camcaffe's own work."""
    import cv2

    paths = []
    for path in C.photos():
        target = photo_dir / f"{path.stem}.jpg"
        cv2.imwrite(str(target), cv2.imread(str(path), cv2.IMREAD_COLOR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(target)
    onnx_path = C.CACHE / f"{name}.onnx"
    _, pipeline = C.make_pipeline(onnx_path, write_overlays=False)
    pool = worker_pool(onnx_path)
    session = bare_session(onnx_path)
    input_name = session.get_inputs()[0].name
    stems = [p.stem for p in paths]
    tensors = [pipeline.load(p)[1][0] for p in paths]
    batch = 8
    ready = [np.stack(C.cycle(tensors, batch, start=i * batch)) for i in range(len(paths))]

    def step_a(i):
        session.run(None, {input_name: ready[i % len(ready)]})

    def step_b_workers(i):
        rounds = [
            (
                C.cycle(paths, batch, (i * pool.size + k) * batch),
                C.cycle(stems, batch, (i * pool.size + k) * batch),
            )
            for k in range(pool.size)
        ]
        for _ in pool.map(rounds, None):
            pass

    C.wait_for_quiet()
    latencies, monitor = interleaved({"a_bare_ort": step_a, "b_workers": step_b_workers}, batch)
    a = C.latency_stats(latencies["a_bare_ort"], batch)["images_per_s"]
    b = C.latency_stats(latencies["b_workers"], batch * pool.size)["images_per_s"]
    print(f"  {name:16s} JPEG photos, batch 8: a {a:.2f} img/s, b-workers {b:.2f} img/s, ratio {b / a:.3f}")
    return {
        "a_images_per_s": a,
        "b_workers_images_per_s": b,
        "ratio": round(b / a, 3),
        "other_procs_cpu_pct": monitor.other_pct,
    }


def worker_pool(onnx_path: Path):
    """The pool `camcaffe cam` builds on this machine: default_workers() single-threaded sessions."""
    from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.engines.workers import PipelinePool, default_workers
    from camcaffe.runtime.session import ModelSession

    workers, threads = default_workers("CPUExecutionProvider")

    def make():
        session = ModelSession(onnx_path, "cpu", threads=threads)
        preprocess, _ = preprocess_from_metadata(session, Preprocess())
        return CamPipeline(session, preprocess, CamSettings(top_k=1, write_overlays=False))

    return PipelinePool([make() for _ in range(workers)])


def ratio(rows: list[dict], model: str, num: str, den: str, batch: int) -> float:
    def ips(mode):
        return next(
            r["images_per_s"]
            for r in rows
            if r["model"] == model and r["mode"] == mode and r["batch"] == batch
        )

    return round(ips(num) / ips(den), 3)


def gpu_section(paths: list[Path]) -> dict:
    """The CUDA path: measured only where camcaffe.runtime.cuda_usable() says a session can run on it."""
    import onnxruntime as ort

    from camcaffe.runtime.session import cuda_usable

    usable = cuda_usable()
    providers = ort.get_available_providers()
    result = {"cuda_usable": usable, "available_providers": providers, "rows": []}
    if not usable:
        result["message"] = (
            "CUDA path not measured: camcaffe.runtime.cuda_usable() is False here (no usable GPU for the "
            f"CUDA EP; onnxruntime {ort.__version__} lists {providers}). No GPU figures are reported or invented."
        )
        print(result["message"])
        return result
    from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess, preprocess_from_metadata
    from camcaffe.runtime.session import ModelSession

    for name in C.MODELS:
        session = ModelSession(C.converted_model(name), "cuda")
        preprocess, _ = preprocess_from_metadata(session, Preprocess())
        pipeline = CamPipeline(session, preprocess, CamSettings(top_k=1, write_overlays=False))
        for batch in (8, 32):

            def step(i, batch=batch, pipeline=pipeline):
                chunk = C.cycle(paths, batch, start=i * batch)
                pipeline.process(chunk, [p.stem for p in chunk], out_dir=None)

            stats = C.latency_stats(timed(step, batch), batch)
            result["rows"].append(
                {
                    "model": name,
                    "mode": "b_pipeline_cuda",
                    "batch": batch,
                    "provider": session.provider_used,
                    **stats,
                }
            )
    result["message"] = (
        "CUDA usable: pipeline (b) measured on the CUDA EP (rows in inference.json, gpu.rows)."
    )
    print(result["message"], result["rows"])
    return result


def markdown(figures: dict) -> str:
    lines = [
        f"Threads: ORT intra-op = {C.THREADS}, cv2.setNumThreads({C.THREADS}); {figures['machine']}",
        "",
        "Modes run interleaved (one batch of each in turn). 'other CPU %': share of the 2 CPUs used by OTHER "
        "processes during the cell (0 = quiet machine; above ~10 % the figures are disturbed).",
        "",
        "| model | mode | batch | images/s | p50 ms/batch | p95 ms/batch | other CPU % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in figures["rows"]:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['images_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['other_procs_cpu_pct']} |"
        )
    lines += ["", "| model | ratio | batch 1 | batch 8 | batch 32 |", "|---|---|---|---|---|"]
    for model, ratios in figures["ratios"].items():
        for key, by_batch in ratios.items():
            lines.append(f"| {model} | {key} | " + " | ".join(str(by_batch[str(b)]) for b in BATCHES) + " |")
    peak = figures["peak"]
    lines += [
        "",
        f"Estimated FP32 peak: {peak['peak_gflops']} GFLOP/s ({peak['assumption']}). "
        + (
            f"Measured: an FMA loop in C ({figures['fma']['isa']}, {figures['fma']['threads']} threads) reaches "
            f"{figures['fma']['gflops']} GFLOP/s and the cores run at {figures['fma']['clock_ghz']} GHz "
            f"(dependent-add chain), so the paper peak at that clock is "
            f"{round(peak['flop_per_cycle_per_core'] * peak['cores'] * figures['fma']['clock_ghz'], 1)} GFLOP/s. "
            if figures["fma"].get("measured")
            else f"FMA loop not measured ({figures['fma'].get('why')}). "
        )
        + f"numpy sgemm 2048^3 reaches {figures['sgemm_gflops']} GFLOP/s.",
        "",
        "| model | GFLOP/image (Conv+Gemm+MatMul, 2 x MAC) | best bare images/s | achieved GFLOP/s | "
        "% of estimated peak | % of measured FMA peak | pipeline (b) b8 GFLOP/s | % of measured FMA peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in figures["achieved"]:
        lines.append(
            f"| {a['model']} | {a['gflop_per_image']} | {a['best_bare_images_per_s']} (batch {a['best_batch']}) | "
            f"{a['achieved_gflops']} | {a['pct_of_peak']} | {a['pct_of_measured_peak']} | {a['pipeline_b8_gflops']} | "
            f"{a['pipeline_b8_pct_of_measured_peak']} |"
        )
    lines += ["", f"GPU: {figures['gpu']['message']}"]
    if figures.get("jpeg_context"):
        lines += [
            "",
            "Context: the same photos re-encoded as JPEG q95 (ImageNet's format; 6 of the 9 photos are PNG, whose "
            "zlib decoding costs 4-10 ms each), batch 8:",
            "",
            "| model | (a) img/s | (b-workers) img/s | ratio | other processes % CPU |",
            "|---|---|---|---|---|",
        ]
        for model, c in figures["jpeg_context"].items():
            lines.append(
                f"| {model} | {c['a_images_per_s']} | {c['b_workers_images_per_s']} | {c['ratio']} | "
                f"{c['other_procs_cpu_pct']} |"
            )
    return "\n".join(lines)


def main() -> None:
    C.require_shared("bench_inference.py")
    C.set_threads()
    import cv2
    import onnxruntime as ort

    peak = cpu_peak()
    figures: dict = {
        "machine": f"{peak['cpu']}, {peak['cores']} cores; onnxruntime {ort.__version__}, OpenCV {cv2.__version__}",
        "threads": C.THREADS,
        "rows": [],
        "ratios": {},
        "peak": peak,
    }
    print(figures["machine"], flush=True)
    figures["sgemm_gflops"] = round(sgemm_gflops(), 1)
    figures["fma"] = measured_peak()
    print("FMA peak:", figures["fma"], flush=True)
    targets = []
    with C.temp_dir("photos") as photo_dir, C.temp_dir("overlays") as overlay_dir:
        paths = C.copy_photos(Path(photo_dir))
        extras = {}
        for name in C.MODELS:
            result = bench_model(name, paths, Path(overlay_dir))
            figures["rows"] += result["rows"]
            extras[name] = result
        figures["gpu"] = gpu_section(paths)
    with C.temp_dir("jpeg") as jpeg_dir:
        figures["jpeg_context"] = {name: jpeg_context(name, Path(jpeg_dir)) for name in C.MODELS}
    figures["flops"] = {name: extras[name]["flops"] for name in extras}
    figures["ort_vs_opencv_outputs"] = {name: extras[name]["ort_vs_opencv"] for name in extras}
    figures["achieved"] = []
    measured = figures["fma"].get("gflops") if figures["fma"].get("measured") else None
    rows = figures["rows"]
    for name in C.MODELS:
        figures["ratios"][name] = {
            key: {str(b): ratio(rows, name, num, den, b) for b in BATCHES}
            for key, (num, den) in {
                "(b)/(a) pipeline vs bare ORT": ("b_pipeline", "a_bare_ort"),
                "(b-workers)/(a) camcaffe cam's pool vs bare ORT": ("b_workers", "a_bare_ort"),
                "(b-workers)/(d) camcaffe cam's pool vs OpenCV dnn": ("b_workers", "d_opencv_dnn"),
                "(b)/(d) pipeline vs OpenCV dnn": ("b_pipeline", "d_opencv_dnn"),
                "(a)/(d) bare ORT vs OpenCV dnn": ("a_bare_ort", "d_opencv_dnn"),
                "(b)/(e) pipeline vs OpenCV imread+blobFromImages+dnn": (
                    "b_pipeline",
                    "e_opencv_imread_blob",
                ),
                "(c)/(b) overlays cost": ("c_pipeline_overlays", "b_pipeline"),
            }.items()
        }
        ba_all = figures["ratios"][name]["(b)/(a) pipeline vs bare ORT"]
        bd_all = figures["ratios"][name]["(b)/(d) pipeline vs OpenCV dnn"]
        ba, bd = ba_all["8"], bd_all["8"]
        b8 = next(r for r in rows if r["model"] == name and r["mode"] == "b_pipeline" and r["batch"] == 8)
        busy = f"; other processes used {b8['other_procs_cpu_pct']} % CPU during the batch-8 cell"
        targets.append(
            C.target(
                f"{name}: pipeline (b) / bare ORT (a) throughput, batch 8",
                ba,
                ">= 0.9",
                ba >= 0.9,
                "batch 1/8/32: " + " / ".join(str(ba_all[str(b)]) for b in BATCHES) + busy,
            )
        )
        targets.append(
            C.target(
                f"{name}: pipeline (b) / OpenCV dnn (d) throughput, batch 8",
                bd,
                ">= 1.3",
                bd >= 1.3,
                "batch 1/8/32: " + " / ".join(str(bd_all[str(b)]) for b in BATCHES) + busy,
            )
        )
        for den, label, goal in (
            ("a_bare_ort", "bare ORT (a)", 0.9),
            ("d_opencv_dnn", "OpenCV dnn (d)", 1.3),
        ):
            value = ratio(rows, name, "b_workers", den, 8)
            targets.append(
                C.target(
                    f"{name}: camcaffe cam's worker pool (b-workers) / {label} throughput, batch 8",
                    value,
                    f">= {goal}",
                    value >= goal,
                    "what `camcaffe cam` runs: one single-threaded pipeline per core" + busy,
                )
            )
        bare = [r for r in rows if r["model"] == name and r["mode"] == "a_bare_ort"]
        best = max(bare, key=lambda r: r["images_per_s"])
        gflop = figures["flops"][name]["gflops"]
        achieved = gflop * best["images_per_s"]
        figures["achieved"].append(
            {
                "model": name,
                "gflop_per_image": gflop,
                "best_bare_images_per_s": best["images_per_s"],
                "best_batch": best["batch"],
                "achieved_gflops": round(achieved, 1),
                "pct_of_peak": round(100 * achieved / peak["peak_gflops"], 1),
                "pct_of_measured_peak": round(100 * achieved / measured, 1) if measured else None,
                "pipeline_b8_gflops": round(gflop * b8["images_per_s"], 1),
                "pipeline_b8_pct_of_peak": round(100 * gflop * b8["images_per_s"] / peak["peak_gflops"], 1),
                "pipeline_b8_pct_of_measured_peak": round(100 * gflop * b8["images_per_s"] / measured, 1)
                if measured
                else None,
            }
        )
    figures["targets"] = targets
    table = markdown(figures)
    print(table)
    C.write_results("inference", figures, table)


if __name__ == "__main__":
    main()
