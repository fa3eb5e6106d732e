"""Bad input: missing/malformed vocab and merges (file and line named), special tokens, text."""

import json

import pytest

from lm.tokenizer import Tokenizer
from lm.tokenizer.gpt2 import EOT


@pytest.fixture()
def good_files(tmp_path, fixtures):
    # A real small tokenizer's files (GPT-2 format: the CS336 reference vocab and merges).
    return fixtures / "train-bpe-reference-vocab.json", fixtures / "train-bpe-reference-merges.txt"


def test_reference_files_load(good_files):
    tok = Tokenizer.from_files(*good_files, [EOT])
    assert tok.vocab_size == 500 and len(tok.merges) == 243 and tok.eot_id == 0
    assert tok.decode(tok.encode("the cat" + EOT)) == "the cat" + EOT


def test_missing_files(good_files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocab file .*missing\.json does not exist"):
        Tokenizer.from_files(tmp_path / "missing.json", good_files[1])
    with pytest.raises(FileNotFoundError, match=r"merges file .*missing\.txt does not exist"):
        Tokenizer.from_files(good_files[0], tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        Tokenizer.load(tmp_path / "nothing")


def test_malformed_vocab_json_names_file_and_line(good_files, tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text('{\n  "a": 0,\n  "b": 1\n  "c": 2\n}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json:4: vocab file is not valid JSON"):
        Tokenizer.from_files(bad, good_files[1])
    bad.write_text(json.dumps({"a": "x"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab key 'a' is not an integer id"):
        Tokenizer.from_files(bad, good_files[1])
    bad.write_text(json.dumps([1, 2]), encoding="utf-8")
    with pytest.raises(ValueError, match="must be a non-empty JSON object"):
        Tokenizer.from_files(bad, good_files[1])
    bad.write_text(json.dumps({"a b": 0}), encoding="utf-8")  # a raw space is outside GPT-2's table
    with pytest.raises(ValueError, match=r"entry 'a b'.*outside GPT-2's byte table"):
        Tokenizer.from_files(bad, good_files[1])


def test_malformed_merges_names_file_and_line(good_files, tmp_path):
    lines = (good_files[1]).read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "merges.txt"
    bad.write_text("\n".join(lines[:2] + ["Ġ t h"] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt:3: expected two tokens separated by one space, got 'Ġ t h'"):
        Tokenizer.from_files(good_files[0], bad)
    bad.write_bytes("Ġ t\n".encode() + b"\xff\xfe x\n")
    with pytest.raises(ValueError, match=r"merges\.txt:2: merges file is not UTF-8"):
        Tokenizer.from_files(good_files[0], bad)


def test_merge_with_token_missing_from_vocab(good_files, tmp_path):
    bad = tmp_path / "merges.txt"
    bad.write_text("Ġ t\nq z\n", encoding="utf-8")  # "qz" is not in the reference vocab
    with pytest.raises(ValueError, match=r"merge 1 \(b'q', b'z'\): token b'qz' is not in the vocab"):
        Tokenizer.from_files(good_files[0], bad)


def test_vocab_without_all_bytes(tmp_path):
    with pytest.raises(ValueError, match="lacks single-byte tokens for bytes"):
        Tokenizer({0: b"a"}, [])


def test_special_token_absent_from_vocab_is_appended_with_warning(good_files):
    with pytest.warns(UserWarning, match=r"special token '<pad>' is not in the vocab; appending it with id 500"):
        tok = Tokenizer.from_files(*good_files, [EOT, "<pad>"])
    assert tok.special_ids == {EOT: 0, "<pad>": 500} and tok.vocab_size == 501
    assert tok.encode("a<pad>b") == [tok.encoder[b"a"], 500, tok.encoder[b"b"]]


def test_lone_surrogate_text(good_files):
    tok = Tokenizer.from_files(*good_files, [EOT])
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert list(tok.encode_iterable(["a\ud800", "b"])) == tok.encode("a\ufffdb")
