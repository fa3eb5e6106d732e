"""Harmful-content classifiers (NSFW, toxic): drop documents a fastText model flags.

``score`` is the only place the two models are loaded and run; ``nsfw_score`` and
``toxic_score`` (P(nsfw), P(toxic)) are columns of kept and rejected documents and are
cached per text and model, so changing a ``*_max_score`` does not run the models again.
"""

from __future__ import annotations

from pydantic import Field

from lm.data.filters.base import Doc, FilterConfig, ModelPath, ScoringFilter
from lm.data.harmful import classify_nsfw, classify_toxic
from lm.data.quality import default_model_path, resolve_model

_CLASSIFY = {"nsfw": classify_nsfw, "toxic": classify_toxic}


class HarmfulConfig(FilterConfig):
    enabled: bool = Field(False, description="run the harmful-content classifiers (off by default: the built-in models are weak demo models; give real ones by path)")
    nsfw: bool = Field(True, description="drop documents the NSFW classifier flags")
    toxic: bool = Field(True, description="drop documents the toxicity classifier flags")
    nsfw_model_path: ModelPath = Field(None, description="fastText model with labels nsfw/non-nsfw; empty = demo model")
    toxic_model_path: ModelPath = Field(None, description="fastText model with labels toxic/non-toxic; empty = demo model")
    nsfw_max_score: float = Field(0.9, ge=0.0, le=1.0, description="drop documents with P(nsfw) at least this")
    toxic_max_score: float = Field(0.9, ge=0.0, le=1.0, description="drop documents with P(toxic) at least this")

class HarmfulFilter(ScoringFilter):
    """Rejects ``nsfw`` or ``toxic`` (checked in that order)."""

    name = "harmful"
    Config = HarmfulConfig
    description = "NSFW and toxicity classifiers"
    columns = {"nsfw_score": "float64", "toxic_score": "float64"}

    def _kinds(self) -> list[str]:
        return [k for k in ("nsfw", "toxic") if getattr(self.config, k)]

    def _path(self, kind: str) -> str | None:
        return getattr(self.config, f"{kind}_model_path")

    def prepare(self) -> None:
        for kind in self._kinds():
            if self._path(kind) is None:
                resolve_model(kind, None)  # train the default (demo) model once, here

    def model_files(self) -> dict[str, str]:
        return {f"{k}_model": self._path(k) or str(default_model_path(k)) for k in self._kinds()}

    def score(self, text: str) -> dict[str, float]:
        out = {}
        for kind in self._kinds():
            label, p = _CLASSIFY[kind](text, self._path(kind))
            out[f"{kind}_score"] = round(p if label == kind else 1.0 - p, 4)
        return out

    def decide(self, doc: Doc) -> tuple[bool, str | None]:
        for kind in self._kinds():
            if doc[f"{kind}_score"] >= getattr(self.config, f"{kind}_max_score"):
                return False, kind
        return True, None
