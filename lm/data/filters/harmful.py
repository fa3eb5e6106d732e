"""Harmful-content classifiers (NSFW, toxic): drop documents a fastText model flags.

``score`` is the only place the two models are run (``lm.data.harmful.harmful_score``:
disguises undone, NSFW per sentence); ``nsfw_score`` and ``toxic_score`` (P(nsfw), P(toxic))
are columns of kept and rejected documents and are cached per text and model, so changing a
``*_max_score`` does not run the models again.
"""

from __future__ import annotations

from pydantic import Field

from lm.data.default_classifiers import default_model_path, resolve_model
from lm.data.filters.base import Doc, FilterConfig, ScoringFilter, model_path_type
from lm.data.harmful import harmful_score

NSFWModelPath, ToxicModelPath = model_path_type("nsfw"), model_path_type("toxic")


class HarmfulConfig(FilterConfig):
    enabled: bool = Field(
        True, description="run the harmful-content classifiers (see docs/filters.md for their held-out figures)"
    )
    nsfw: bool = Field(
        True,
        description=(
            "drop documents the NSFW classifier flags (default model: "
            "held-out F1 0.89, 0.85 of disguised obscenities caught)"
        ),
    )
    toxic: bool = Field(
        False,
        description=(
            "drop documents the toxicity classifier flags (off by default: the "
            "default model's held-out F1 is 0.67; give a stronger one by path)"
        ),
    )
    nsfw_model_path: NSFWModelPath = Field(
        None,
        description=(
            "fastText model with labels nsfw/non-nsfw (Dolma's Jigsaw model "
            "loads as is); empty = default model trained locally on first use"
        ),
    )
    toxic_model_path: ToxicModelPath = Field(
        None,
        description=(
            "fastText model with labels toxic/non-toxic (Dolma's Jigsaw model "
            "loads as is); empty = default model trained locally on first use"
        ),
    )
    nsfw_max_score: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="drop documents with P(nsfw) at least this (scored per sentence: the highest decides)",
    )
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
        return {f"{kind}_score": round(harmful_score(kind, text, self._path(kind)), 4) for kind in self._kinds()}

    def decide(self, doc: Doc) -> tuple[bool, str | None]:
        for kind in self._kinds():
            if doc[f"{kind}_score"] >= getattr(self.config, f"{kind}_max_score"):
                return False, kind
        return True, None
