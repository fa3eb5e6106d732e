"""``lmpipe generate``: text from a checkpoint directory, with the tokenizer the checkpoint records."""

from lm.train.data import byte_tokens, write_token_shards
from lm.train.trainer import train


def test_generate_prints_prompt_and_continuation(reference, tmp_path, capsys):
    from flows.cli import main

    ids = byte_tokens((reference / "assignment1-basics/fixtures/tinystories_sample.txt").read_text())
    write_token_shards(
        tmp_path / "tok", {"train": [ids[:3000]], "val": [ids[3000:]]}, vocab_size=257, eot_id=256, tokenizer="bytes"
    )
    s = train(
        dict(
            model=dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=64),
            data=str(tmp_path / "tok"),
            out_dir=str(tmp_path / "run"),
            batch_size=4,
            max_steps=5,
            device="cpu",
        )
    )
    capsys.readouterr()  # drop the trainer's log
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                s["checkpoint"],
                "--prompt",
                "Once",
                "--max-new-tokens",
                "12",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("Once") and len(out) > len("Once\n")
