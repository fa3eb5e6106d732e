"""Evaluation: answer parsing (GSM8K last number, MMLU option letter), data loaders,
generation evaluations that keep every row, and perplexity."""

from lm.eval.parse import parse_gsm8k_response, parse_mmlu_response

__all__ = ["parse_gsm8k_response", "parse_mmlu_response"]
