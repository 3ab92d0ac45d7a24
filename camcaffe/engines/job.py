"""A CAM job: everything needed to build a pipeline, as plain picklable data.

The `cam` command builds one from its flags; the local engine and a distributed engine (one pipeline
per worker process) both build their pipelines from it, so they compute the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from camcaffe.engines.pipeline import CamPipeline, CamSettings, Preprocess


@dataclass
class CamJob:
    model: Path
    preprocess: Preprocess
    settings: CamSettings
    provider: str = "auto"
    threads: int | None = None
    labels: list[str] | None = None
    labels_source: str | None = None
    feature_layer: str | None = None
    fc_layer: str | None = None
    batch_size: int = 8
    out: Path | None = None
    json: bool = False
    paths: list[Path] = field(default_factory=list)
    stems: list[str] = field(default_factory=list)

    def make_session(self, threads: int | None = None, provider: str | None = None, model=None):
        from camcaffe.runtime.session import ModelSession

        return ModelSession(
            model if model is not None else self.model,
            provider or self.provider,
            threads=threads if threads is not None else self.threads,
            source=str(self.model),
        )

    def make_pipeline(self, session=None) -> CamPipeline:
        return CamPipeline(
            session if session is not None else self.make_session(),
            self.preprocess,
            self.settings,
            self.labels,
            self.feature_layer,
            self.fc_layer,
            labels_source=self.labels_source,
        )

    def batches(self) -> list[tuple[list[Path], list[str]]]:
        size = self.batch_size
        return [(self.paths[i : i + size], self.stems[i : i + size]) for i in range(0, len(self.paths), size)]
