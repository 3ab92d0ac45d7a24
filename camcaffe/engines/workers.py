"""Several CAM pipelines, one ONNX Runtime session each, working on batches at once.

On a CPU, one session with N intra-op threads leaves the cores idle while images are decoded and
boxes drawn; N single-threaded sessions overlap those stages with inference. Results come back in
input order and at most 2 batches per worker are in flight, so memory stays bounded."""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from camcaffe.engines.pipeline import CamPipeline, ImageOutcome

Batch = tuple[list[Path], list[str]]


def default_workers(provider: str) -> tuple[int, int]:
    """(workers, intra-op threads per session) for a provider: one session on a GPU; on a CPU one
    single-threaded session per core (at most 4)."""
    cores = os.cpu_count() or 1
    if provider == "CUDAExecutionProvider":
        return 1, cores
    workers = max(1, min(4, cores))
    return workers, max(1, cores // workers)


class PipelinePool:
    def __init__(self, pipelines: list[CamPipeline]):
        if not pipelines:
            raise ValueError("PipelinePool needs at least one pipeline")
        self._free: queue.SimpleQueue[CamPipeline] = queue.SimpleQueue()
        for pipeline in pipelines:
            self._free.put(pipeline)
        self.size = len(pipelines)
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="camcaffe-worker")
        self._pending: deque[Future] = deque()
        self.started: list[Batch] = []  # every batch handed to a worker, in order

    @classmethod
    def build(cls, first: CamPipeline, factory: Callable[[], CamPipeline], workers: int) -> PipelinePool:
        return cls([first] + [factory() for _ in range(workers - 1)])

    def _run(self, batch: Batch, out_dir: Path | None) -> list[ImageOutcome]:
        pipeline = self._free.get()
        try:
            return pipeline.process(batch[0], batch[1], out_dir)
        finally:
            self._free.put(pipeline)

    def map(self, batches: Iterable[Batch], out_dir: Path | None) -> Iterator[list[ImageOutcome]]:
        """Outcomes of each batch, in the order the batches were given."""
        # A batch leaves _pending only once its result is in hand: a Ctrl-C while waiting for it leaves it
        # to stop(), which waits for it and hands its outcomes over too.
        for batch in batches:
            self.started.append(batch)
            self._pending.append(self._executor.submit(self._run, batch, out_dir))
            if len(self._pending) >= 2 * self.size:
                result = self._pending[0].result()
                self._pending.popleft()
                yield result
        while self._pending:
            result = self._pending[0].result()
            self._pending.popleft()
            yield result

    def stop(self) -> list[list[ImageOutcome]]:
        """Cancel batches not started, wait for the running ones, and return what they produced (in
        order), so that every file written is accounted for."""
        for future in self._pending:
            future.cancel()
        self._executor.shutdown(wait=True)
        finished = [f.result() for f in self._pending if not f.cancelled() and f.exception() is None]
        self._pending.clear()
        return finished

    def close(self) -> None:
        self._executor.shutdown(wait=True)
