"""Byte-level BPE: training (``train_bpe``) and encoding/decoding (``Tokenizer``)."""

from lm.tokenizer.train import train_bpe

__all__ = ["train_bpe"]
