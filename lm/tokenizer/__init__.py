"""Byte-level BPE: training (``train_bpe``) and encoding/decoding (``Tokenizer``)."""

from lm.tokenizer.tokenizer import Tokenizer
from lm.tokenizer.train import train_bpe

__all__ = ["Tokenizer", "train_bpe"]
