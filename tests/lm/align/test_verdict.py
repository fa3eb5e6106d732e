"""Reward verdicts: a fall or a flat reward beyond/within noise, and a chain that never rose above chance."""

import pytest

from lm.align.verdict import chain_warnings, noise, reward_verdict, verdict_from_metrics


def test_the_pipeline_demos_falling_chain_is_flagged():
    # SFT 0.080 -> DPO 0.045 -> GRPO 0.030 on 200 held-out prompts (the web-text demo)
    sft, dpo, grpo = (
        reward_verdict(0.0, 0.080, 200),
        reward_verdict(0.080, 0.045, 200),
        reward_verdict(0.045, 0.030, 200),
    )
    assert sft.trend == "rose" and sft.above_chance and not sft.warn
    # on 200 prompts both drops are within two standard errors: no gain, flagged all the same
    assert (
        dpo.trend == "flat"
        and dpo.warn
        and dpo.message("DPO").startswith("⚠ DPO did NOT raise the reward (held-out reward 0.080 → 0.045")
    )
    assert grpo.trend == "flat" and grpo.warn
    warnings = chain_warnings([("SFT", sft), ("DPO", dpo), ("GRPO", grpo)])
    assert len(warnings) == 2 and warnings[0].startswith("⚠ DPO did NOT") and warnings[1].startswith("⚠ GRPO did NOT")
    assert dpo.flag() == "⚠ NO GAIN (-0.035, noise ±0.048)" and sft.flag() == ""
    big = reward_verdict(0.30, 0.10, 200)  # a fall beyond the noise
    assert big.trend == "fell" and "FALL" in big.message("DPO") and big.flag().startswith("⚠ FELL (-0.200")


def test_a_reward_that_never_rose_above_chance():
    v = reward_verdict(0.0, 0.005, 200)  # one right answer in 200
    assert not v.above_chance and v.trend == "flat"
    assert (
        "never rose above chance" in v.message() and v.flag() == "⚠ NO GAIN (+0.005, noise ±0.010), never above chance"
    )
    chain = chain_warnings([("SFT", v), ("GRPO", reward_verdict(0.005, 0.0, 200))])
    assert chain[-1].startswith("⚠ the reward never rose above chance in SFT → GRPO")
    assert chain_warnings([("GRPO", reward_verdict(0.2, 0.6, 200))]) == []


def test_noise_and_metrics():
    assert noise(0.5, 0.5, 100) == pytest.approx(0.1 * 2**0.5)  # 2·sqrt((.25 + .25) / 100)
    assert noise(0.0, 0.0, 50) == 1 / 50  # never below one prompt
    v = verdict_from_metrics({"accuracy_before": 0.1, "accuracy_after": 0.5, "num_scored": 100})
    assert (v.before, v.after, v.num_prompts, v.trend) == (0.1, 0.5, 100, "rose")
    assert (
        verdict_from_metrics({"accuracy_before": 0.1, "accuracy_after": 0.5}, 40).num_prompts == 40
    )  # older manifests
    assert verdict_from_metrics({"nll_before": 2.0}) is None
