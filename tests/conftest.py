"""Suite-wide rule: under CI=true the browser and Ray tests must run, so their "not installed" skips fail.

`.ci/run` installs Chromium and camcaffe[ray] and stops when it cannot; this hook is the second guard, for
a CI that goes around it: a skip whose reason says Chromium, Ray, pyarrow or onnxruntime-web (the files
`make web` fetches for the `camcaffe web` page) is missing becomes a failure."""

from __future__ import annotations

import os
import re

import pytest

CI_REQUIRED = re.compile(r"chromium|\bRay\b|Ray Data|pyarrow|onnxruntime-web", re.IGNORECASE)


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


def _fail_if_required(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (report.skipped and running_in_ci()):
        return
    reason = _skip_reason(report)
    if CI_REQUIRED.search(reason):
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test must run in CI, but it was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_required(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_required(outcome.get_result())
