import numpy as np
import pytest
from pydantic import ValidationError

from lm.scaling.flops import flops_per_token, shape_for_d_layers
from lm.scaling.sweep import ScalingConfig, corpus_info, plan_runs
from lm.train.data import byte_tokens, write_token_shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, reference):
    """corpus.en as byte-level token shards (vocab 257), 90% train / 10% val."""
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text())
    cut = int(len(ids) * 0.9)
    out = tmp_path_factory.mktemp("tokens")
    write_token_shards(out, {"train": [ids[:cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256)
    return corpus_info(out)


def config(**kw):
    base = dict(corpus="unused", budgets=[1e10, 3e10], model_sizes=[16000, 33000, 53000], target_budget=1e12)
    return ScalingConfig(**{**base, **kw})


def test_corpus_info(corpus):
    assert corpus["vocab_size"] == 257
    assert corpus["tokens"]["train"] == 119_724 and corpus["tokens"]["val"] == 13_303


def test_plan_spends_each_budget(corpus):
    cfg = config()
    runs, notes = plan_runs(cfg, corpus)
    assert notes == [] and len(runs) == 6
    for r in runs:
        shape = shape_for_d_layers(r["d_model"], r["num_layers"])
        per_step = flops_per_token(shape, cfg.context_length, 257) * cfg.batch_size * cfg.context_length
        assert r["compute"] <= r["budget"] < r["compute"] + per_step  # whole steps, never over budget
        assert r["tokens"] == r["steps"] * cfg.batch_size * cfg.context_length
        assert r["lr"] == pytest.approx(3e-3 * 64 / r["d_model"])  # inverse_width rule
    assert len({r["run_id"] for r in runs}) == 6


def test_extending_a_sweep_keeps_the_old_run_ids(corpus):
    old = {r["run_id"] for r in plan_runs(config(), corpus)[0]}
    new = {r["run_id"] for r in plan_runs(config(budgets=[1e10, 3e10, 9e10]), corpus)[0]}
    assert old < new and len(new - old) == 3
    # a change that alters training (the seed) changes every id
    assert not old & {r["run_id"] for r in plan_runs(config(seed=1), corpus)[0]}


def test_runs_below_min_steps_are_skipped_with_a_note(corpus):
    runs, notes = plan_runs(config(budgets=[1e9, 1e10], min_steps=40), corpus)
    assert any("skipped budget 1e+09 × N=53,248 (64×1)" in n for n in notes)
    assert all(r["steps"] >= 40 for r in runs)


def test_bad_configs_fail_naming_the_field(tmp_path):
    with pytest.raises(ValidationError, match="budgets"):
        config(budgets=[1e10, -1])
    with pytest.raises(ValidationError, match="≥ 2 distinct budgets"):
        config(budgets=[1e10])
    with pytest.raises(ValidationError, match="≥ 3 models per budget"):
        config(model_sizes=[16000, 33000])
    with pytest.raises(ValidationError, match="target_budget"):
        config(target_budget=0)
    with pytest.raises(FileNotFoundError, match="no stage manifest"):
        corpus_info(tmp_path)
    write_token_shards(tmp_path / "t", {"train": [np.arange(100)]}, vocab_size=257)
    with pytest.raises(ValueError, match="needs 'train' and 'val' shards"):
        corpus_info(tmp_path / "t")


def test_a_diverged_run_is_cached_with_nan_losses_and_a_failed_run_is_not(corpus, tmp_path):
    import math

    from lm.scaling.stage import execute_run

    cfg = config(
        budgets=[1e9, 2e9], lr=1e8, lr_rule="constant", batch_size=4, context_length=32, min_steps=5, eval_batches=2
    )
    run = plan_runs(cfg, corpus)[0][0]
    row = execute_run(run, corpus, root=tmp_path, device="cpu")
    assert row["status"] == "diverged" and math.isnan(row["final_train_loss"]) and math.isnan(row["final_val_loss"])
    assert row["note"] == "loss went non-finite: excluded from the fits" and not row["cached"]
    assert execute_run(run, corpus, root=tmp_path, device="cpu")["cached"]  # deterministic: not retrained

    broken = {**corpus, "dir": str(tmp_path / "missing")}
    failed = execute_run(plan_runs(config(), corpus)[0][0], broken, root=tmp_path, device="cpu")
    assert failed["status"] == "failed" and "missing" in failed["note"]
    assert not (tmp_path / "scaling-runs" / failed["run_id"] / "result.json").exists()  # retried next time


def test_auto_budgets_come_from_the_corpus_and_the_grid(corpus):
    from lm.scaling.sweep import auto_budgets, resolve_budgets

    cfg = config(budgets="auto", batch_size=4, context_length=32, min_steps=5)
    resolved, notes = resolve_budgets(cfg, corpus)
    budgets = resolved.budgets
    assert (
        len(budgets) == 3
        and budgets == sorted(budgets)
        and budgets[1] / budgets[0] == pytest.approx(budgets[2] / budgets[1], rel=0.01)
    )
    assert f"({corpus['tokens']['train']:,} training tokens)" in notes[0]
    runs, skipped = plan_runs(resolved, corpus)
    assert skipped == [] and len(runs) == 9  # every model trains at every budget (≥ min_steps)
    # the middle model reads at most max_epochs passes over the training tokens
    mid = sorted(runs, key=lambda r: r["params"])[3]
    top = max(r["tokens"] for r in runs if r["params"] == mid["params"])
    assert top <= cfg.max_epochs * corpus["tokens"]["train"] * 1.01
    # a tiny corpus leaves no window: the budgets still come, with a plain warning
    small = {**corpus, "tokens": {"train": 2_000, "val": 200}}
    _, small_notes = auto_budgets(cfg, small)
    assert any(
        "the corpus is small for this grid" in n and "expect overfitting and no bracketed minimum" in n
        for n in small_notes
    )
    with pytest.raises(ValueError, match="resolved against the corpus"):
        plan_runs(cfg, corpus)
