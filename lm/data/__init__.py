"""Data stages of lmpipe: ingestion, extraction, filtering, dedup, and the stage contract.

Public names are imported lazily so that ``import lm.data`` stays cheap and a missing
optional model (fastText, say) fails only where it is used.
"""

from lm.data.shards import Stage, read_manifest  # noqa: F401
