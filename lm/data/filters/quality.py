"""The fastText quality classifier: keep documents that read like reference text.

The model call (``score``) is the only place a quality model is loaded and run; its result,
``quality_score`` = P(wiki) (``lm.data.quality.quality_score``), is a column of kept and
rejected documents and is cached per text and model, so changing ``min_score`` does not run
the model again.
"""

from __future__ import annotations

from pydantic import Field

from lm.data.default_classifiers import default_model_path, resolve_model
from lm.data.filters.base import Doc, FilterConfig, ScoringFilter, model_path_type
from lm.data.quality import quality_score

QualityModelPath = model_path_type("quality")


class QualityConfig(FilterConfig):
    model_path: QualityModelPath = Field(
        None,
        description=(
            "fastText model with labels wiki/cc (or DCLM's hq/cc); empty = default model trained locally on first use"
        ),
    )
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="keep documents with P(wiki) at least this")


class QualityFilter(ScoringFilter):
    name = "quality"
    Config = QualityConfig
    description = "quality classifier (fastText, P(wiki))"
    columns = {"quality_score": "float64"}

    def prepare(self) -> None:
        if self.config.model_path is None:
            resolve_model("quality", None)  # train the default model once, here, not in every worker

    def model_files(self) -> dict[str, str]:
        return {"model": self.config.model_path or str(default_model_path("quality"))}

    def score(self, text: str) -> dict[str, float]:
        return {"quality_score": round(quality_score(text, self.config.model_path), 4)}

    def decide(self, doc: Doc) -> tuple[bool, str | None]:
        return (True, None) if doc["quality_score"] >= self.config.min_score else (False, "quality_low")
