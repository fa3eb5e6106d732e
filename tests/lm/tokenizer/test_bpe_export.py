"""Save/load, from_files on both formats, HF tokenizer.json and tiktoken ranks round trips."""

import pytest

from lm.tokenizer import Tokenizer, train_bpe
from lm.tokenizer.export import export_hf_tokenizer_json, export_tiktoken_ranks, load_tiktoken_ranks, tiktoken_encoding
from lm.tokenizer.gpt2 import EOT


@pytest.fixture(scope="module")
def trained(fixtures) -> Tokenizer:
    vocab, merges = train_bpe(fixtures / "corpus.en", 1000, [EOT])
    return Tokenizer(vocab, merges, [EOT])


@pytest.fixture(scope="module")
def sample(fixtures) -> str:
    parts = [
        (fixtures / n).read_text(encoding="utf-8") for n in ("tinystories_sample.txt", "german.txt", "address.txt")
    ]
    return "".join(parts) + " 🙃 Мама 東京  \n\n  tail  "


def test_save_load_round_trip(trained, tmp_path, sample):
    d = trained.save(tmp_path / "tok")
    assert sorted(p.name for p in d.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    back = Tokenizer.load(d)
    assert back.vocab == trained.vocab and back.merges == trained.merges
    assert back.special_tokens == [EOT] and back.eot_id == trained.eot_id == 256
    assert back.encode(sample) == trained.encode(sample)
    # from_files reads our format too.
    again = Tokenizer.from_files(d / "vocab.json", d / "merges.txt", [EOT])
    assert again.vocab == trained.vocab and again.merges == trained.merges


def test_gpt2_files_round_trip_through_our_format(gpt2, tmp_path, sample):
    back = Tokenizer.load(gpt2.save(tmp_path / "gpt2"), use_fast=False)
    assert back.vocab == gpt2.vocab and back.merges == gpt2.merges
    assert back.encode(sample) == gpt2.encode(sample)


@pytest.mark.parametrize("which", ["trained", "gpt2"])
def test_hf_tokenizer_json_loads_and_encodes_to_same_ids(which, trained, gpt2, tmp_path, sample):
    import tokenizers

    tok = trained if which == "trained" else gpt2
    path = export_hf_tokenizer_json(tok, tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.get_vocab_size() == tok.vocab_size
    ids = tok.encode(sample)
    assert hf.encode(sample).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == sample
    assert hf.token_to_id(EOT) == tok.eot_id


@pytest.mark.parametrize("which", ["trained", "gpt2"])
def test_tiktoken_ranks_round_trip(which, trained, gpt2, tmp_path, sample, monkeypatch):
    import tiktoken.load

    tok = trained if which == "trained" else gpt2
    path = export_tiktoken_ranks(tok, tmp_path / "ranks.tiktoken")
    ranks = load_tiktoken_ranks(path)
    assert ranks == {t: i for i, t in tok.vocab.items() if t != EOT.encode()}
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file itself, not a cached copy
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == ranks
    enc = tiktoken_encoding(path, {EOT: tok.eot_id})
    assert enc.encode(sample, allowed_special="all") == tok.encode(sample)
