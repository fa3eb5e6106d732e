"""Data stages of lmpipe: ingestion, extraction, filtering, dedup, and the stage contract.

Public names are imported lazily so that ``import lm.data`` stays cheap and a missing
optional model (fastText, say) fails only where it is used.
"""

from lm.data.shards import Stage, read_manifest  # noqa: F401

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    "iter_records": "lm.data.warc",
    "html_to_text": "lm.data.extract",
    "identify_language": "lm.data.langid",
    "mask_emails": "lm.data.pii",
    "mask_phone_numbers": "lm.data.pii",
    "mask_ips": "lm.data.pii",
    "gopher_quality_ok": "lm.data.quality",
    "classify_quality": "lm.data.quality",
    "classify_nsfw": "lm.data.harmful",
    "classify_toxic": "lm.data.harmful",
    "exact_line_dedup": "lm.data.dedup.exact",
    "minhash_dedup": "lm.data.dedup.minhash",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lm.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
