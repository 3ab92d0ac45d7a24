"""Progress of a long run on stderr: a tqdm bar on a terminal, else one line every few seconds
(`done/total images, rate, ETA`), so that logs of batch jobs show the run is alive. `quiet` silences it."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DEFAULT_INTERVAL_S = 5.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CAMCAFFE_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts finished items (images) out of `total` and shows it on `stream`."""

    def __init__(
        self,
        total: int,
        quiet: bool = False,
        stream: TextIO | None = None,
        unit: str = "image",
        interval: float | None = None,
    ):
        self.total, self.done, self.unit = total, 0, unit
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.interval = _interval() if interval is None else interval
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar = None
        if not quiet and total > 1 and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", file=self.stream)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"camcaffe: {self.done}/{self.total} {self.unit}s, {rate:.1f} {self.unit}s/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval and self.done < self.total:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def write(self, message: str) -> None:
        """A message (a skipped image, ...) that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class StepLine:
    """Progress inside one batch of a costly method: at most one line per interval, e.g.
    `camcaffe: scorecam: 320/1000 extra passes of the current batch`."""

    def __init__(self, method: str, stream: TextIO | None = None, interval: float | None = None):
        self.method = method
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else interval
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval and done < total:
            self._last = now
            print(
                f"camcaffe: {self.method}: {done}/{total} extra passes of the current batch",
                file=self.stream,
                flush=True,
            )
