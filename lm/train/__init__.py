"""Training pieces: loss, optimizer, schedule, batches, checkpoints (the trainer is lm.train.trainer)."""

from lm.train.checkpoint import CheckpointCorruptError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from lm.train.data import TokenShards, get_batch
from lm.train.loss import cross_entropy
from lm.train.optim import AdamW, clip_grad_norm_
from lm.train.schedule import cosine_lr

__all__ = [
    "AdamW",
    "CheckpointCorruptError",
    "TokenShards",
    "clip_grad_norm_",
    "cosine_lr",
    "cross_entropy",
    "get_batch",
    "load_checkpoint",
    "read_checkpoint_meta",
    "save_checkpoint",
]
