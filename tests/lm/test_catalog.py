"""lm.catalog (stage folders, latest outputs) and lm.compare (two outputs side by side), on
real stage outputs: Common Crawl pages through a word-count rule, and two real SFT runs."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from lm.catalog import describe_root, describe_stage_folder, is_latest_ref, latest, resolve_latest, stage_outputs
from lm.compare import compare, compare_outputs, comparison_text, loss_curves, plot_curves
from lm.data import html_to_text, iter_records
from lm.data.shards import Stage, read_manifest
from tests.lm.align.test_align_stages import pretrained  # noqa: F401 (fixture: a tiny pretrain stage)

SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("text", pa.string())])


def pages(reference) -> list[tuple[str, str]]:
    out = []
    for path in sorted((reference / "commoncrawl").glob("*.warc.gz")):
        for r in iter_records(str(path)):
            if r.record_type == "response" and (text := html_to_text(r.payload)):
                out.append((r.url, text))
    return out


def word_rule_stage(root, docs, min_words: int) -> str:
    """A real filter stage: documents with fewer than ``min_words`` words are rejected."""
    stage = Stage(root, "rules", version="1", config={"min_words": min_words, "lang": "en"})
    with stage.open_shard(0, schema=SCHEMA) as w:
        for i, (url, text) in enumerate(docs):
            w.count_in()
            row = {"id": str(i), "url": url, "text": text}
            if len(text.split()) < min_words:
                w.reject(row, "too_few_words")
            elif "lorem ipsum" in text.lower():
                w.reject(row, "lorem_ipsum")
            else:
                w.write(row)
    return str(stage.commit(1))


@pytest.fixture(scope="module")
def rules_root(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    docs = pages(reference)
    older = word_rule_stage(root, docs, 150)
    os.utime(older, (os.path.getmtime(older) - 100,) * 2)  # commit times tick in seconds
    newer = word_rule_stage(root, docs, 282)
    (root / "rules" / "deadbeef00000000").mkdir()  # a run still writing: no manifest, one shard done
    (root / "rules" / "deadbeef00000000" / "part-00000.done.json").write_text("{}")
    return root, older, newer


def test_stage_folder_lists_outputs_newest_first_with_status(rules_root):
    root, older, newer = rules_root
    outs = stage_outputs(root / "rules")
    assert [o.status for o in outs if o.status == "complete"] == ["complete", "complete"]
    complete = [o for o in outs if o.status == "complete"]
    assert [str(o.manifest) for o in complete] == [newer, older]
    assert [o for o in outs if o.status == "incomplete"][0].shards_done == 1
    assert complete[0].counts["rejected"]["too_few_words"] > complete[1].counts["rejected"]["too_few_words"]
    assert str(latest(root / "rules").manifest) == newer
    text = describe_stage_folder(root / "rules")
    fp_new, fp_old = (read_manifest(p)["fingerprint"] for p in (newer, older))
    assert f"latest = {fp_new}" in text and "incomplete" in text and "1 shard(s) finished so far" in text
    assert f"config {fp_old} -> {fp_new}:" in text and "  min_words: 150 -> 282" in text
    assert "rules" in describe_root(root) and fp_new in describe_root(root)


def test_a_corrupt_manifest_is_listed_never_latest(rules_root, tmp_path):
    root, older, newer = rules_root
    import shutil

    copy = tmp_path / "rules"
    shutil.copytree(root / "rules", copy)
    shutil.copy2(root / ".lmpipe-key", tmp_path / ".lmpipe-key")  # the copied root's signing key (mode 0600 kept)
    fp_new = read_manifest(newer)["fingerprint"]
    (copy / fp_new / "_manifest.json").write_text(
        (copy / fp_new / "_manifest.json").read_text().replace('"in"', '"IN"', 1)
    )
    statuses = {o.fingerprint: o.status for o in stage_outputs(copy)}
    assert statuses[fp_new] == "corrupt"
    assert latest(copy).fingerprint == read_manifest(older)["fingerprint"]


def test_latest_references(rules_root, tmp_path):
    root, _, newer = rules_root
    assert (
        is_latest_ref("rules@latest") and is_latest_ref("outputs/rules/latest") and not is_latest_ref("outputs/rules")
    )
    assert resolve_latest("rules@latest", root) == resolve_latest(f"{root}/rules/latest") == newer
    with pytest.raises(FileNotFoundError, match="has not run under this root"):
        resolve_latest("tokenizer@latest", root)
    (tmp_path / "empty" / "fp").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no finished output"):
        resolve_latest("empty@latest", tmp_path)


def test_compare_two_outputs_of_a_data_stage(rules_root):
    _, older, newer = rules_root
    cmp = compare_outputs(older, newer)
    assert cmp.stage == "rules" and cmp.config == [("min_words", 150, 282)]
    counts = {k: (a, b) for k, a, b in cmp.counts}
    a, b = read_manifest(older)["counts"], read_manifest(newer)["counts"]
    assert counts["in"] == (a["in"], b["in"]) and counts["kept"] == (a["kept"], b["kept"])
    assert counts["rejected: too_few_words"] == (a["rejected"]["too_few_words"], b["rejected"]["too_few_words"])
    assert not cmp.curves
    text = comparison_text(cmp)
    assert "min_words" in text and "too_few_words" in text and f"-{a['kept'] - b['kept']}" in text
    assert compare_outputs(newer, newer).same
    with pytest.raises(ValueError, match="compare two outputs of one stage"):
        compare_outputs(newer, str(Stage(rules_root[0], "other", version="1", config={}).commit(0)))


def test_compare_two_training_runs_has_their_loss_curves(reference, tmp_path, pretrained):  # noqa: F811 (the fixture)
    from lm.align.sft import SFTConfig
    from lm.align.stages import AlignDataConfig, StageOptions, build_align_data, run_sft

    a5 = reference / "assignment5-alignment"
    data = build_align_data(
        tmp_path,
        AlignDataConfig(
            source="sft_jsonl",
            train_path=str(a5 / "fixtures/sft_sample.jsonl"),
            template="alpaca_sft",
            prompts_dir=str(a5 / "prompts"),
        ),
        "instruction",
    )
    opts = StageOptions(verifier=None, max_new_tokens=4, num_samples=2, num_threads=1)
    runs = [
        run_sft(tmp_path, pretrained, data, SFTConfig(num_steps=n, batch_size=2, eval_every=2), opts) for n in (4, 6)
    ]
    [cmp] = compare(*runs)
    assert cmp.config == [("sft.num_steps", 4, 6)]
    curves = loss_curves(read_manifest(runs[1]))
    assert [x for x, _ in curves["loss"]] == [1, 2, 3, 4, 5, 6]
    assert len(cmp.curves["loss"][0]) == 4 and len(cmp.curves["loss"][1]) == 6
    assert cmp.curves["eval nll"][1][-1][0] == 6
    assert plot_curves(cmp, tmp_path / "c.png").stat().st_size > 1000
