"""Is a held-out reward going up? Plain verdicts for stage reports and the chain's summary.

An alignment stage measures the verifier reward on the same held-out prompts before and after
training (``accuracy_before`` / ``accuracy_after`` in its manifest's metrics, over
``num_scored`` prompts). With a few hundred prompts a difference of a few points is noise, so a
change counts only beyond two standard errors of the difference (binomial, and at least one
prompt). A reward that fell or stayed flat is flagged, and so is a chain whose reward never
rose above chance: for the exact-answer verifiers (arithmetic, gsm8k, r1_zero) chance is about
0 — guessing the exact number is almost never right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHANCE = 0.0  # exact-answer verifiers: a guess is almost never right


@dataclass
class RewardVerdict:
    """The held-out reward of one stage: before, after, and what the change means."""

    before: float
    after: float
    num_prompts: int
    trend: str  # "rose", "fell" or "flat" (within noise)
    above_chance: bool  # before or after is distinguishable from CHANCE

    @property
    def warn(self) -> bool:
        return self.trend != "rose" or not self.above_chance

    def flag(self) -> str:
        """A few words for a summary table ("" when the reward rose above chance)."""
        change, margin = self.after - self.before, noise(self.before, self.after, self.num_prompts)
        words = {
            "fell": [f"FELL ({change:+.3f}, noise ±{margin:.3f})"],
            "flat": [f"NO GAIN ({change:+.3f}, noise ±{margin:.3f})"],
        }.get(self.trend, [])
        words += ["never above chance"] if not self.above_chance else []
        return ("⚠ " + ", ".join(words)) if words else ""

    def message(self, stage: str = "the stage") -> str:
        margin = noise(self.before, self.after, self.num_prompts)
        what = (
            f"held-out reward {self.before:.3f} → {self.after:.3f} on {self.num_prompts} prompts, noise ±{margin:.3f}"
        )
        if self.trend == "fell":
            text = f"⚠ {stage} made the reward FALL ({what}): this stage made the model worse at the task"
        elif self.trend == "flat":
            text = f"⚠ {stage} did NOT raise the reward ({what}): no measurable gain"
        else:
            text = f"{stage} raised the reward ({what})"
        if not self.above_chance:
            text += f"; ⚠ the reward never rose above chance ({CHANCE:g}): the model cannot do this task yet"
        return text


def noise(p1: float, p2: float, n: int) -> float:
    """Two standard errors of the difference of two rates measured on ``n`` prompts (≥ 1/n)."""
    n = max(n, 1)
    se = math.sqrt(max(p1 * (1 - p1) + p2 * (1 - p2), 0.0) / n)
    return max(2 * se, 1 / n)


def above_chance(p: float, n: int, chance: float = CHANCE) -> bool:
    n = max(n, 1)
    return p - chance > max(2 * math.sqrt(max(p * (1 - p), 0.0) / n), 1 / n)


def reward_verdict(before: float, after: float, num_prompts: int) -> RewardVerdict:
    margin = noise(before, after, num_prompts)
    trend = "rose" if after - before > margin else "fell" if before - after > margin else "flat"
    return RewardVerdict(before, after, num_prompts, trend, above_chance(max(before, after), num_prompts))


def verdict_from_metrics(metrics: dict, num_prompts: int | None = None) -> RewardVerdict | None:
    """The verdict of a stage manifest's metrics; None when the stage scored no reward."""
    if "accuracy_before" not in metrics or "accuracy_after" not in metrics:
        return None
    n = int(metrics.get("num_scored") or num_prompts or 0)
    return reward_verdict(float(metrics["accuracy_before"]), float(metrics["accuracy_after"]), n)


def chain_warnings(stages: list[tuple[str, RewardVerdict]]) -> list[str]:
    """Warnings for a chain of stages (SFT → DPO → GRPO): each one that did not raise the
    reward, and the whole chain if its reward never rose above chance."""
    out = [v.message(name) for name, v in stages if v.trend != "rose"]
    if stages and not any(v.above_chance for _, v in stages):
        out.append(
            f"⚠ the reward never rose above chance in {' → '.join(n for n, _ in stages)}: "
            "no stage taught the model this task"
        )
    return out
