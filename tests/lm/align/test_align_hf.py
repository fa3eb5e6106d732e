"""A local Hugging Face causal LM through the same stages (optional ``hf`` extra).

Marked ``hf``: `make test` deselects it (transformers is not in the lock). Run it with, e.g.:
    pip install --no-deps --target /tmp/hf transformers==5.23.0
    PYTHONPATH=.:/tmp/hf python -m pytest -m hf tests/lm/align/test_align_hf.py
"""

import pytest
import torch

pytestmark = pytest.mark.hf

from lm.align.grpo import GRPOConfig
from lm.align.sft import SFTConfig
from lm.align.stages import AlignDataConfig, StageOptions, build_align_data, load_policy, run_grpo, run_sft
from lm.data.shards import Stage, read_manifest


def test_hf_model_sft_then_grpo(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=257, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    stage = Stage(tmp_path, "hf-import", version="1", config={})
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(stage.path / "model"))
    manifest = stage.commit(extra={"checkpoint": str(stage.path / "model"), "tokenizer": "bytes"})
    data = AlignDataConfig(num_train=100, num_eval=10)
    opts = StageOptions(max_new_tokens=4, num_samples=4, num_threads=1)
    sft = run_sft(tmp_path, manifest, build_align_data(tmp_path, data, "instruction"), SFTConfig(num_steps=10, batch_size=8, lr=3e-3, eval_every=5), opts)
    m = read_manifest(sft)
    assert m["metrics"]["nll_after"] < m["metrics"]["nll_before"]
    model, tok, _ = load_policy(sft)
    assert isinstance(model, transformers.GPT2LMHeadModel) and tok.eot_id == 256
    grpo = run_grpo(tmp_path, sft, build_align_data(tmp_path, data, "problem"),
                    GRPOConfig(num_steps=1, num_prompts_per_step=2, group_size=4, max_new_tokens=4, eval_every=1), opts)
    assert read_manifest(grpo)["counts"]["rollouts"] == 8
