"""What a funnel filter is: one class with a name, a config model and ``keep`` (or ``transform``).

A filter reads one document (a dict: ``id``, ``url``, ``source``, ``text``, …) and either

- decides: ``keep(doc) -> (True, None) | (False, rule)``; the filter stage writes a rejected
  document with ``reason = "<filter name>:<rule>"`` (``rules:gopher_too_few_words``); or
- rewrites: ``transform(doc) -> {count: n}`` (PII masking), never rejecting.

Either may annotate the document (``doc["language"] = "en"``): the columns it adds are
declared in ``columns`` so the stage knows the output schema before the first row. Files a
filter reads (models, word lists) are declared by ``model_files()``: the stage fingerprints
them by content, so a replaced model makes a new stage directory.

A filter that runs a model subclasses :class:`ScoringFilter`: ``score(text)`` (the model call,
cached per document text and model, see ``lm.data.filters.scores``) and ``decide(doc)`` (the
thresholds), so changing a threshold reuses the scores instead of running the model again.

The config model is a pydantic model with a description on every field; the registry
(``lm.data.filters.FILTERS``) makes it a section of the funnel config and of the UI form.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import Annotated, Any, ClassVar

import pyarrow as pa
from pydantic import AfterValidator, Field

from lm.config import Config

Doc = dict  # a row: id, url, source, text, and the columns earlier filters added


class FilterConfig(Config):
    """Base of a filter's settings: switchable, unknown keys refused (with "did you mean")."""

    enabled: bool = Field(True, description="run this filter")

    def settings(self) -> dict:
        """What the stage fingerprint hashes: every field but ``enabled``."""
        return self.model_dump(mode="json", exclude={"enabled"})


class Filter:
    """One funnel filter. Subclasses set ``name``, ``Config``, ``description`` and define
    ``keep`` or ``transform`` (see the module docstring)."""

    name: ClassVar[str]  # config section and prefix of reject reasons: lowercase, [a-z0-9_]
    Config: ClassVar[type[FilterConfig]]
    description: ClassVar[str]  # one line: the UI form's help for the section
    columns: ClassVar[dict[str, str]] = {}  # columns added to documents: name -> Arrow type ("float64")
    version: ClassVar[str] = "1"  # bump when the code changes what the filter writes

    def __init__(self, config: FilterConfig):
        self.config = config

    def model_files(self) -> dict[str, str]:
        """Files this filter reads, by role (``{"model": path}``): fingerprinted by content."""
        return {}

    def prepare(self) -> None:
        """Once per run, before any shard (e.g. fetch or train a default model)."""

    def check(self) -> None:
        """Raise ValueError for a setting that cannot work (checked before any work starts)."""

    # One of these two:
    def keep(self, doc: Doc) -> tuple[bool, str | None]:
        raise NotImplementedError

    def transform(self, doc: Doc) -> dict[str, int]:
        raise NotImplementedError

    @classmethod
    def is_transform(cls) -> bool:
        return cls.transform is not Filter.transform


class ScoringFilter(Filter):
    """A filter whose decision is a threshold on model scores (quality, harmful content).

    ``score(text)`` returns the score columns (``{"quality_score": 0.91}``); they depend only
    on the text, the model files and ``version``, never on thresholds. ``decide(doc)`` reads
    them from ``doc``. The stage caches scores per document text (``lm.data.filters.scores``),
    so a rerun with a new threshold does not call the model.
    """

    def score(self, text: str) -> dict[str, float]:
        raise NotImplementedError

    def decide(self, doc: Doc) -> tuple[bool, str | None]:
        raise NotImplementedError

    def keep(self, doc: Doc) -> tuple[bool, str | None]:
        doc.update(self.score(doc["text"]))
        return self.decide(doc)


# --------------------------------------------------------------------------- declared files

_hash_lock = threading.Lock()
_hashes: dict[tuple[str, int, int], str] = {}


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's content (16 hex chars), computed once per process per
    (path, size, mtime): a model's identity in fingerprints and score-cache keys."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise FileNotFoundError(f"declared input file {str(path)!r} does not exist") from None
    key = (real, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hashes:
            return _hashes[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    with _hash_lock:
        _hashes[key] = h.hexdigest()[:16]
    return _hashes[key]


def check_filter_class(cls: Any) -> None:
    """Refuse a filter class the stage could not use, naming what is missing."""
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        raise TypeError(f"{cls!r} is not a subclass of lm.data.filters.Filter")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
        raise ValueError(
            f"filter {cls.__name__}: name {name!r} must be 1-32 characters of [a-z0-9_], starting with a letter"
        )
    cfg = getattr(cls, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, FilterConfig)):
        raise TypeError(f"filter {name}: Config must subclass lm.data.filters.FilterConfig")
    undocumented = [f for f, info in cfg.model_fields.items() if not info.description]
    if undocumented:
        raise ValueError(f"filter {name}: Config fields {undocumented} need a description (the UI form shows it)")
    if not getattr(cls, "description", None):
        raise ValueError(f"filter {name}: set `description` (one line shown in the UI form)")
    for col, alias in cls.columns.items():
        try:
            pa.type_for_alias(alias)
        except ValueError:
            raise ValueError(
                f"filter {name}: column {col!r} has type {alias!r}; "
                "use an Arrow type name such as float64, string, bool"
            ) from None
    has_keep = cls.keep is not Filter.keep
    if has_keep == cls.is_transform():
        raise TypeError(f"filter {name}: define exactly one of keep(doc) -> (bool, reason) or transform(doc) -> counts")


def check_model_file(path: str | None, kind: str | None = None) -> str | None:
    """Validate a model path: a missing or non-fastText file, or one without ``kind``'s
    positive label (``lm.data.classifier.check_model_labels``), is a validation error of its
    field (pydantic wants ValueError)."""
    if path is not None:
        from lm.data.classifier import check_fasttext_file, check_model_labels

        try:
            check_fasttext_file(path)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        if kind:
            check_model_labels(path, kind)
    return path


def model_path_type(kind: str):
    """The type of a config field holding a ``kind`` fastText model path (None: the default
    model), checked when the config is validated."""
    return Annotated[str | None, AfterValidator(lambda p: check_model_file(p, kind))]
