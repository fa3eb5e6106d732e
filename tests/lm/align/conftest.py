"""Fixtures for the alignment tests: the seeded inputs of the CS336 assignment-5 snapshot tests,
rebuilt from their seeds.

Each fixture there calls ``torch.manual_seed(42)`` before drawing its tensor, so each is
reproducible alone: logits randn(2,10,100); masks rand_like(...) > 0.5; rewards rand(2,1);
policy log-probs randn(2,10); old log-probs = policy + randn_like; advantages = rewards −
their mean over the batch. The dummy reward hashes the response with SHA-256.
"""

import hashlib

import numpy as np
import pytest
import torch

B, T, V = 2, 10, 100


def seeded(fn):
    torch.manual_seed(42)
    return fn()


def inputs() -> dict:
    logits = seeded(lambda: torch.randn(B, T, V))
    policy = seeded(lambda: torch.randn(B, T))
    rewards = seeded(lambda: torch.rand(B, 1))
    return {
        "logits": logits,
        "mask": seeded(lambda: torch.rand_like(logits) > 0.5),
        "raw_rewards": rewards,
        "advantages": rewards - rewards.mean(dim=0),
        "policy_log_probs": policy,
        "old_log_probs": seeded(lambda: policy + torch.randn_like(policy)),
        "response_mask": seeded(lambda: torch.rand_like(policy) > 0.5),
    }


def _hash_reward(response: str, ground_truth: str) -> dict:
    r = (int(hashlib.sha256(response.encode()).hexdigest(), 16) % 10) / 10.0
    return {"reward": r, "format_reward": r, "answer_reward": r}


def load(reference, name: str) -> dict:
    return dict(np.load(reference / "assignment5-alignment" / "_snapshots" / f"{name}.npz"))


def assert_snapshot(actual, expected, rtol=1e-4, atol=1e-6):
    """Tighter than the CS336 default (atol 1e-2): these are exact float32 recomputations."""
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


class Snapshots:
    def __init__(self, reference):
        self.reference = reference

    def load(self, name: str) -> dict:
        return load(self.reference, name)

    check = staticmethod(assert_snapshot)


@pytest.fixture(scope="session")
def snapshots(reference) -> Snapshots:
    """Loads ``_snapshots/<name>.npz`` of CS336 assignment 5 and compares arrays to it."""
    return Snapshots(reference)


@pytest.fixture(scope="session")
def snapshot_inputs() -> dict:
    return inputs()


@pytest.fixture
def hash_reward():
    """The CS336 dummy verifier: (SHA-256 of the response mod 10) / 10."""
    return _hash_reward
