"""Throughput and MFU in metrics.jsonl: FLOPs per token from lm.scaling.flops, peak FLOP/s by device."""

import pytest
import torch

from lm.model import ModelConfig
from lm.scaling.flops import ModelShape, flops_per_token
from lm.train.metrics import compute_dtype_name, model_flops_per_token, peak_flops, peak_for_device_name, throughput


def test_flops_per_token_is_the_scaling_laws_count():
    cfg = ModelConfig(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048)
    n = 12 * (4 * 768**2 + 3 * 768 * 2048)
    assert model_flops_per_token(cfg) == 6 * n + 6 * 768 * 50304 + 12 * 12 * 1024 * 768
    assert model_flops_per_token(cfg) == flops_per_token(ModelShape(768, 12, 12, 2048), 1024, 50304)


def test_mfu_is_model_flops_over_peak_of_all_ranks():
    row = throughput(tokens=32_768, seconds=0.5, flops_per_token=1e9, peak=989.4e12, world_size=2)
    assert row == {"tokens_per_s": 65536.0, "step_time_s": 0.5, "mfu": round(65536 * 1e9 / (2 * 989.4e12), 4)}
    assert throughput(tokens=100, seconds=2.0, flops_per_token=1e9, peak=None, world_size=1)["mfu"] is None


@pytest.mark.parametrize(
    "name, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "bf16", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA H100 NVL", "fp32", 60e12),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_peak_flops_table(name, dtype, peak):
    assert peak_for_device_name(name, dtype) == peak


def test_cpu_reports_no_peak_unless_given():
    assert peak_flops(torch.device("cpu"), "fp32") is None
    assert peak_flops(torch.device("cpu"), "fp32", override=2e12) == 2e12
    assert compute_dtype_name(torch.bfloat16, allow_tf32=True) == "bf16"
    assert compute_dtype_name(None, allow_tf32=True) == "tf32" and compute_dtype_name(None, allow_tf32=False) == "fp32"
