"""Progress lines on a non-terminal stream, and the in-batch step lines of the costly methods."""

from __future__ import annotations

import io

from camcaffe.engines.progress import Progress, StepLine, format_duration


def test_lines_without_a_terminal_give_count_rate_and_eta():
    stream = io.StringIO()
    progress = Progress(10, stream=stream, interval=0.0)
    progress.update(4)
    progress.update(6)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1  # the last update (10/10) is the summary's job
    assert lines[0].startswith("camcaffe: 4/10 images, ") and "images/s" in lines[0] and "ETA" in lines[0]


def test_lines_are_spaced_by_the_interval_and_quiet_prints_nothing():
    stream = io.StringIO()
    progress = Progress(100, stream=stream, interval=3600.0)
    for _ in range(50):
        progress.update()
    assert stream.getvalue() == ""
    quiet = io.StringIO()
    silent = Progress(100, quiet=True, stream=quiet, interval=0.0)
    silent.update(5)
    assert quiet.getvalue() == "" and silent.done == 5


def test_step_lines_and_durations():
    stream = io.StringIO()
    step = StepLine("scorecam", stream=stream, interval=0.0)
    step(64, 1000)
    step(1000, 1000)
    assert stream.getvalue().splitlines() == ["camcaffe: scorecam: 64/1000 extra passes of the current batch"]
    assert format_duration(41) == "41 s" and format_duration(125) == "2 min 05 s"
    assert format_duration(7322) == "2 h 02 min"
