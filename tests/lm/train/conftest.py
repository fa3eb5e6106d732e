"""A real token-shard directory for trainer tests: byte-level ids of the CS336 corpus.en fixture."""

import pytest

from lm.train.data import byte_tokens, write_token_shards


@pytest.fixture(scope="session")
def byte_shards(reference, tmp_path_factory):
    text = (reference / "assignment1-basics/fixtures/corpus.en").read_text()
    ids = byte_tokens(text)
    cut = int(len(ids) * 0.9)
    out = tmp_path_factory.mktemp("tokens")
    write_token_shards(
        out, {"train": [ids[: cut // 2], ids[cut // 2 : cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256
    )
    return out
