"""The funnel's filters: one class each, registered in one list.

``FILTERS`` is the chain, in order: every document goes through the enabled filters one
after another in a single pass (the ``filters`` stage, ``lm.data.filters.stage``), and the
first that rejects it names itself in the reject reason (``rules:gopher_too_few_words``).
The funnel config, its UI form, the stage's output columns and fingerprint, and the funnel
report all come from this list.

Adding a filter touches two places: its own module (a :class:`Filter` subclass with a
``name``, a ``Config`` model whose fields all have descriptions, and ``keep`` or
``transform``) and one entry in ``FILTERS`` below. A filter defined elsewhere (a plugin, a
test) is added with :func:`register_filter` before the flows are imported::

    from lm.data.filters import Filter, FilterConfig, register_filter

    class ShortLinesConfig(FilterConfig):
        max_fraction: float = Field(0.5, ge=0, le=1, description="largest fraction of short lines")

    @register_filter
    class ShortLinesFilter(Filter):
        name, Config, description = "short_lines", ShortLinesConfig, "drop pages made of short lines"

        def keep(self, doc):
            lines = doc["text"].splitlines()
            short = sum(len(l.split()) < 4 for l in lines) / max(len(lines), 1)
            return (short <= self.config.max_fraction, "too_many_short_lines")
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, Field, create_model

from lm.config import Config
from lm.data.filters.base import Doc, Filter, FilterConfig, ScoringFilter, check_filter_class, content_hash
from lm.data.filters.harmful import HarmfulConfig, HarmfulFilter
from lm.data.filters.langid import LangIdConfig, LanguageFilter
from lm.data.filters.pii import PIIConfig, PIIFilter
from lm.data.filters.quality import QualityConfig, QualityFilter
from lm.data.filters.rules import C4Options, GopherThresholds, RulesConfig, RulesFilter

__all__ = [
    "FILTERS",
    "Doc",
    "Filter",
    "FilterConfig",
    "ScoringFilter",
    "content_hash",
    "register_filter",
    "get_filter",
    "filters_config_model",
    "LanguageFilter",
    "PIIFilter",
    "RulesFilter",
    "QualityFilter",
    "HarmfulFilter",
    "LangIdConfig",
    "PIIConfig",
    "RulesConfig",
    "GopherThresholds",
    "C4Options",
    "QualityConfig",
    "HarmfulConfig",
]

# The chain, in order. A new filter: its module above, one entry here.
FILTERS: list[type[Filter]] = [LanguageFilter, PIIFilter, RulesFilter, QualityFilter, HarmfulFilter]

for _cls in FILTERS:
    check_filter_class(_cls)


def register_filter(cls: type[Filter] | None = None, *, before: str | None = None):
    """Add a filter class to the chain (at the end, or before the filter named ``before``).

    Usable as a decorator. Register before importing ``flows`` (their config models are built
    from the registry when imported); ``lm``-level runs (``lm.data.stages``) see it at once.
    """

    def add(c: type[Filter]) -> type[Filter]:
        check_filter_class(c)
        if any(f.name == c.name for f in FILTERS):
            raise ValueError(f"a filter named {c.name!r} is already registered: {get_filter(c.name).__qualname__}")
        names = [f.name for f in FILTERS]
        if before is not None and before not in names:
            raise ValueError(f"before={before!r}: no such filter; registered: {', '.join(names)}")
        FILTERS.insert(names.index(before) if before else len(FILTERS), c)
        return c

    return add(cls) if cls is not None else add


def get_filter(name: str) -> type[Filter]:
    for f in FILTERS:
        if f.name == name:
            return f
    raise ValueError(f"unknown filter {name!r}; registered: {', '.join(f.name for f in FILTERS)}")


class _FiltersBase(Config):
    def enabled_filters(self) -> list[Filter]:
        """Instances of the enabled filters, in chain order."""
        out = []
        for cls in FILTERS:
            section = getattr(self, cls.name, None)
            if section is not None and section.enabled:
                out.append(cls(section))
        return out


def filters_config_model() -> type[BaseModel]:
    """The pydantic model of the filter stage's settings: one section per registered filter
    (its ``Config``, described by its ``description``) and ``materialize_each``."""
    return _config_model(tuple(FILTERS))


@lru_cache(maxsize=8)
def _config_model(filters: tuple[type[Filter], ...]) -> type[BaseModel]:
    fields = {f.name: (f.Config, Field(default_factory=f.Config, description=f.description)) for f in filters}
    fields["materialize_each"] = (
        bool,
        Field(
            False,
            description="also write each filter's output as its own stage "
            "(`<root>/<filter>/<fingerprint>/`) for inspection; off: one pass, one output",
        ),
    )
    model = create_model("FiltersConfig", __base__=_FiltersBase, __module__=__name__, **fields)
    model.__doc__ = "Which filters run, in this order, and their settings."
    return model
