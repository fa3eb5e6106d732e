"""Deduplication: exact line dedup (two passes over hashed lines) and MinHash near-dup dedup."""
