"""Checkpoints: round trip (weights, AdamW state, RNG), tied weights, mismatched shape, corruption."""

import json
import random

import pytest
import torch

from lm.model import ModelConfig, TransformerLM, load_model
from lm.train import AdamW, CheckpointCorruptError, cross_entropy, load_checkpoint, save_checkpoint


def _cfg(**kw):
    return ModelConfig(
        **{**dict(vocab_size=50, context_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=32), **kw}
    )


def _trained(cfg, steps=3):
    torch.manual_seed(0)
    m = TransformerLM(cfg)
    opt = AdamW(m.parameters(), lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(0, 50, (2, 16))
        loss = cross_entropy(m(ids)[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, opt


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_restores_weights_optimizer_and_rng(tmp_path, tie):
    m, opt = _trained(_cfg(tie_embeddings=tie))
    torch.manual_seed(123)
    save_checkpoint(m, opt, 3, tmp_path / "ck", train_config={"lr": 1e-2})
    expected_next = torch.rand(3)
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"model.safetensors", "optimizer.safetensors", "meta.json"}
    torch.manual_seed(0)
    m2 = TransformerLM(_cfg(tie_embeddings=tie))
    opt2 = AdamW(m2.parameters(), lr=1e-2)
    assert load_checkpoint(tmp_path / "ck", m2, opt2) == 3
    torch.testing.assert_close(torch.rand(3), expected_next)  # RNG restored to the save point
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for idx in s1["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(s1["state"][idx][name], s2["state"][idx][name], rtol=0, atol=0)
    if tie:
        assert m2.lm_head.weight is m2.token_embeddings.weight
    loaded = load_model(tmp_path / "ck")
    assert loaded.config == m.config and not loaded.training


def test_the_meta_does_not_depend_on_pythons_global_random(tmp_path):
    """Other code in the process (Prefect's threads) draws from Python's global ``random``:
    two saves of the same state differ in nothing but the save time, whatever it drew."""
    m, opt = _trained(_cfg())
    metas = []
    for i, seed in enumerate([1, 2]):
        random.seed(seed)
        torch.manual_seed(7)
        save_checkpoint(m, opt, 3, tmp_path / f"ck{i}")
        meta = json.loads((tmp_path / f"ck{i}" / "meta.json").read_text())
        metas.append({k: v for k, v in meta.items() if k not in ("saved_at", "meta_sha256")})
    assert metas[0] == metas[1] and "python" not in metas[0]["rng"]
    random.seed(5)
    before = random.getstate()
    load_checkpoint(tmp_path / "ck0", TransformerLM(_cfg()), AdamW(m.parameters(), lr=1e-2))
    assert random.getstate() == before  # loading leaves it alone too


def test_different_shape_lists_mismatched_keys(tmp_path):
    m, opt = _trained(_cfg())
    save_checkpoint(m, opt, 3, tmp_path / "ck")
    other = TransformerLM(_cfg(d_ff=48, num_layers=2))
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "ck", other)
    msg = str(e.value)
    assert "layers.0.ffn.w1.weight: checkpoint (32, 16) vs model (48, 16)" in msg
    assert "missing in checkpoint: layers.1.attn.q_proj.weight" in msg


def test_corrupted_file_is_reported(tmp_path):
    m, opt = _trained(_cfg())
    ck = save_checkpoint(m, opt, 3, tmp_path / "ck")
    raw = bytearray((ck / "model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match="model.safetensors"):
        load_checkpoint(ck, TransformerLM(_cfg()))
    # no checksum to lean on: a truncated header is still a clear error, not a crash
    meta = json.loads((ck / "meta.json").read_text())
    meta["files"] = {}
    (ck / "meta.json").write_text(json.dumps(meta))  # an edited meta.json fails its own checksum
    with pytest.raises(CheckpointCorruptError, match="meta.json does not match its checksum"):
        load_checkpoint(ck, TransformerLM(_cfg()))
    del meta["meta_sha256"]  # as written before meta.json carried a checksum
    (ck / "meta.json").write_text(json.dumps(meta))
    (ck / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointCorruptError, match="not readable safetensors"):
        load_checkpoint(ck, TransformerLM(_cfg()))
    (ck / "meta.json").write_text("{truncated")
    with pytest.raises(CheckpointCorruptError, match="meta.json"):
        load_checkpoint(ck, TransformerLM(_cfg()))


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(tmp_path):
    m, opt = _trained(_cfg())
    save_checkpoint(m, opt, 1, tmp_path / "ck")
    save_checkpoint(m, opt, 2, tmp_path / "ck")
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["iteration"] == 2
