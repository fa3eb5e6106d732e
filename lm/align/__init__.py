"""Alignment: SFT, DPO and GRPO with verifiers, on any (B, T) -> logits causal LM.

ops.py        masked_mean, masked_normalize, compute_entropy, get_response_log_probs
losses.py     sft_microbatch_train_step, compute_group_normalized_rewards,
              no_baseline / reinforce_with_baseline / grpo_clip losses, dpo_loss
batches.py    tokenize_prompt_and_output (response mask), pack_examples, iterate_batches
rewards.py    verifiers: gsm8k_reward, arithmetic_reward, r1_zero_reward
rollout.py    batched sampling with a KV cache
sft.py dpo.py grpo.py   the training loops (train_sft, train_dpo, train_grpo)
data.py       Parquet schemas and prompt templates
demo.py       the addition task a CPU model can learn
stages.py     the stages the Prefect tasks run (data, demo base, sft, dpo, grpo, evaluate)
verdict.py    did a stage raise the held-out reward? (fell / no gain / never above chance)
"""

from lm.align.losses import (
    compute_group_normalized_rewards,
    compute_policy_gradient_loss,
    dpo_loss,
    grpo_microbatch_train_step,
    sft_microbatch_train_step,
)
from lm.align.ops import compute_entropy, get_response_log_probs, masked_mean, masked_normalize

__all__ = [
    "compute_entropy",
    "compute_group_normalized_rewards",
    "compute_policy_gradient_loss",
    "dpo_loss",
    "get_response_log_probs",
    "grpo_microbatch_train_step",
    "masked_mean",
    "masked_normalize",
    "sft_microbatch_train_step",
]
