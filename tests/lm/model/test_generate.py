"""Generation: the KV-cache path equals the uncached path; top-p, eot stop, context limit, bytes round trip."""

import pytest
import torch

from lm.model import ModelConfig, TransformerLM
from lm.model.generate import generate, sample_next
from lm.tokenizer.load import ByteTokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TransformerLM(
        ModelConfig(vocab_size=61, context_length=40, d_model=32, num_layers=2, num_heads=4, d_ff=64)
    ).eval()


def test_cached_logits_equal_uncached(model):
    ids = torch.randint(0, 61, (1, 30))
    full = model(ids)
    cache = model.new_cache(1)
    step = [model(ids[:, :10], cache)]  # prefill, then one token at a time
    step += [model(ids[:, t : t + 1], cache) for t in range(10, 30)]
    torch.testing.assert_close(torch.cat(step, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.8, 0.9)])
def test_cached_generation_equals_uncached(model, temperature, top_p):
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        outs.append(
            generate(
                model,
                [1, 2, 3, 4],
                max_new_tokens=25,
                temperature=temperature,
                top_p=top_p,
                use_cache=use_cache,
                generator=g,
            )
        )
    assert outs[0] == outs[1] and len(outs[0]) == 25


def test_generation_stops_at_eot_and_context(model):
    greedy = generate(model, [5, 6], max_new_tokens=10, temperature=0)
    eot = greedy[3]
    stopped = generate(model, [5, 6], max_new_tokens=10, temperature=0, eot_id=eot)
    assert stopped == greedy[: greedy.index(eot) + 1]
    assert len(generate(model, list(range(35)), max_new_tokens=100, temperature=0)) == 40 - 35
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, [61])


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.7, g)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are never drawn


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "héllo<|endoftext|>world"
    ids = tok.encode(text)
    assert ids.count(256) == 1 and len(ids) == len("héllo".encode()) + 1 + 5
    assert tok.decode(ids) == text


def test_compiled_model_generates_the_same_tokens(model, one_thread):
    # prefill (T=4), then one token at a time with a growing cache: dynamo compiles each shape once
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    want = generate(model, [1, 2, 3, 4], max_new_tokens=12, temperature=0)
    assert generate(compiled, [1, 2, 3, 4], max_new_tokens=12, temperature=0) == want
