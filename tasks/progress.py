"""Progress and live metrics for the long stages (pretrain, scaling, SFT, DPO, GRPO, evaluate).

One ``Progress`` per loop: a Prefect progress artifact (0-100, with the latest metrics in its
description), a log line at a fixed cadence, and at the end a markdown artifact with the
curve plot and a table of the logged points. ``lm/`` stays Prefect-free: its loops take a
plain ``Callable[[dict], None]`` hook, and a ``Progress`` is one::

    with Progress("sft", total=cfg.num_steps) as progress:  # a failure is written on the artifact
        # the loop calls progress({"step": 3, "loss": 1.2, "tokens": 512})
        stages.run_sft(..., on_progress=progress)
    progress.finish("SFT", png=stage_dir / "curves.png")

A pretraining subprocess reports through its metrics.jsonl instead: ``tail_metrics`` follows
the file from a thread while the subprocess runs and feeds its rows to the ``Progress``.

Events are dicts with ``step`` (required), optionally ``total`` (replaces the total),
``tokens`` (processed in this step: tokens/s is computed), ``tokens_per_s`` (given as is),
and any numeric metrics (loss, reward, eval_*, val_loss …). ``{"phase": "…"}`` logs a line at once.

Cadence: a log line and an artifact update when the step crosses a multiple of ``every``
(``total / lines``, so about 20 lines per loop whatever its length), on the last step, and
whenever ``max_silence_s`` passed since the last line, so a slow loop still shows life.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError

from lm.align.plots import plot_curves
from lm.markdown import markdown_table
from tasks.artifacts import artifact_key, image_markdown

MAX_POINTS = 4000  # per metric, for the closing plot
_SHOWN = (
    "loss",
    "reward",
    "val_loss",
    "eval_nll",
    "eval_reward",
    "eval_accuracy",
    "eval_loss",
)  # first; then the rest by name


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow or task (a notebook): plain logging
        import logging

        return logging.getLogger("lmpipe.progress")


class Progress:
    """A progress artifact, cadenced log lines and a closing curves artifact for one loop."""

    def __init__(
        self,
        name: str,
        total: int,
        *,
        unit: str = "step",
        lines: int = 20,
        max_silence_s: float = 30.0,
        keyed: bool = True,
    ):
        if total < 0:
            raise ValueError(f"total={total}: the number of {unit}s must be >= 0")
        self.name, self.total, self.unit = name, total, unit
        self.lines, self.max_silence_s = lines, max_silence_s
        # keyed: the UI's Artifacts page lists it under "<name>-progress"; unkeyed, it shows on its run only
        self.key = artifact_key(name, "progress") if keyed else None
        self.log = _logger()
        self.started = self.last_line = time.time()
        self.step = 0
        self.tokens = 0
        self.latest: dict[str, float] = {}
        self.history: dict[str, list[tuple[int, float]]] = {}  # metric -> [(step, value)]
        self.logged: list[dict] = []  # the rows of the cadence (the closing table)
        self._next_mark = self.every
        self._lock = threading.Lock()
        self.artifact_id = create_progress_artifact(
            0.0, key=self.key, description=f"{name}: starting ({total} {unit}s)"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """A loop that raised leaves its artifact saying so (where it stopped and why), not a stale bar."""
        if exc is not None:
            with self._lock:
                message = f"{self.name}: FAILED at {self.unit} {self.step}/{self.total}: {type(exc).__name__}: {exc}"[
                    :500
                ]
                self.log.error(message)
                update_progress_artifact(self.artifact_id, self._percent(), description=message)
        return False

    @property
    def every(self) -> int:
        return max(1, math.ceil(self.total / max(self.lines, 1))) if self.total else 1

    def __call__(self, event: dict) -> None:
        """The hook lm loops call (from any thread of this task)."""
        with self._lock:
            if "phase" in event:
                self.log.info(f"{self.name}: {event['phase']}")
                return
            if event.get("total"):
                self.total = int(event["total"])
            step = int(event.get("step", self.step))
            self.tokens += int(event.get("tokens", 0) or 0)
            for k, v in event.items():
                if (
                    k not in ("step", "total", "tokens", "phase")
                    and isinstance(v, (int, float))
                    and v is not None
                    and math.isfinite(v)
                ):
                    self.latest[k] = float(v)
                    points = self.history.setdefault(k, [])
                    points.append((step, float(v)))
                    if len(points) > MAX_POINTS:  # a long run: keep every other point, the curve's shape stays
                        points[:] = points[::2]  # (odd length: first and latest kept)
            if self.tokens and "tokens_per_s" not in event:
                self.latest["tokens_per_s"] = self.tokens / max(time.time() - self.started, 1e-9)
            advanced = step > self.step
            self.step = max(self.step, step)
            due = (
                self.step >= self._next_mark
                or (self.total and self.step >= self.total)
                or time.time() - self.last_line >= self.max_silence_s
            )
            evaluation = any(k.startswith(("eval_", "val_")) for k in event)  # evaluations are rare: each gets its line
            if (advanced and due) or evaluation:
                while self._next_mark <= self.step:
                    self._next_mark += self.every
                self._report()

    def _line(self) -> str:
        pct = f" ({100 * self.step / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.name} {self.unit} {self.step}/{self.total}{pct}"]
        first = [k for k in _SHOWN if k in self.latest]
        for k in first + sorted(k for k in self.latest if k not in first and k != "tokens_per_s"):
            parts.append(f"{k} {self.latest[k]:.4g}")
        if "tokens_per_s" in self.latest:
            parts.append(f"{self.latest['tokens_per_s']:,.0f} tok/s")
        return " · ".join(parts)

    def _percent(self) -> float:
        return min(100.0, 100.0 * self.step / self.total) if self.total else 0.0

    def _report(self) -> None:
        line = self._line()
        self.log.info(line)
        self.last_line = time.time()
        self.logged.append(
            {
                "step": self.step,
                **{k: round(v, 4) for k, v in self.latest.items()},
                "elapsed_s": round(self.last_line - self.started, 1),
            }
        )
        update_progress_artifact(self.artifact_id, self._percent(), description=line)

    def close(self, message: str = "done") -> None:
        """Progress to 100 without a closing artifact (a loop inside a larger one)."""
        with self._lock:
            self.step = max(self.step, self.total)
            update_progress_artifact(self.artifact_id, 100.0, description=f"{self.name}: {message} · {self._line()}")

    def finish(self, title: str, *, png: str | Path | None = None, note: str = "", reused: bool = False) -> None:
        """Progress to 100 and the closing artifact: title, note, the curve plot (``png``, else
        one drawn from the metrics this run logged) and the table of logged points."""
        with self._lock:
            self.step = max(self.step, self.total)
            elapsed = time.time() - self.started
            done = "reused (nothing to do)" if reused else f"finished in {elapsed:.1f} s"
            update_progress_artifact(self.artifact_id, 100.0, description=f"{self.name}: {done} · {self._line()}")
            self.log.info(f"{self.name}: {done}")
            md = [f"# {title}", f"{self.name}: {done}" + (f" · {self.tokens:,} tokens" if self.tokens else ""), ""]
            if note:
                md += [note, ""]
            with tempfile.TemporaryDirectory(prefix="lmpipe-progress-") as tmp:
                plot = Path(png) if png and Path(png).exists() else self._plot(Path(tmp) / "curves.png")
                if plot is not None:
                    md.append(image_markdown(plot, f"{self.name} curves"))
            if self.logged:
                cols = list(dict.fromkeys(k for row in self.logged for k in row))  # every metric any row has
                md += [
                    f"## Logged every {self.every} {self.unit}(s)",
                    "",
                    markdown_table([{c: row.get(c, "") for c in cols} for row in self.logged]),
                ]
            create_markdown_artifact(
                markdown="\n".join(md),
                key=artifact_key(self.name, "curves"),
                description=f"{self.name}: curves and the metrics logged as it ran",
            )

    def _plot(self, out: Path) -> Path | None:
        """Losses in one panel, rewards and accuracies in another (what a person watches)."""
        series = self.history
        groups = {
            "loss": [k for k in series if "loss" in k or "nll" in k],
            "reward / accuracy": [k for k in series if "reward" in k or "accuracy" in k],
        }
        panels = [
            (label, [(k, [s for s, _ in series[k]], [y for _, y in series[k]]) for k in keys])
            for label, keys in groups.items()
            if keys
        ]
        if not panels:
            return None
        return plot_curves(out, self.name, panels)


def metrics_event(row: dict) -> dict | None:
    """A trainer metrics.jsonl row as a progress event (None for rows that carry none)."""
    kind = row.get("kind")
    if kind == "train":
        keep = ("loss", "lr", "tokens_per_s", "mfu", "grad_norm")
        return {"step": row["step"], **{k: row[k] for k in keep if isinstance(row.get(k), (int, float))}}
    if kind == "eval":
        return {"step": row["step"], "val_loss": row["val_loss"]}
    if kind == "diverged":
        return {"phase": f"diverged at step {row.get('step')}: {row.get('reason') or row.get('loss')}"}
    return None


@contextlib.contextmanager
def tail_metrics(path: str | Path, progress: Progress, *, poll_s: float = 1.0) -> Iterator[None]:
    """Follow a trainer's metrics.jsonl while the body runs, feeding each new row to ``progress``.

    Reads only complete lines; starts over when the file shrinks (a resumed run drops the lines
    past its checkpoint). The thread runs in a copy of this context, so its artifact updates
    and log lines belong to the calling task run; it stops (after a last read) when the body ends.
    """
    path = Path(path)
    stop = threading.Event()
    state = {"offset": 0, "partial": ""}

    def read_new() -> None:
        if not path.exists():
            return
        size = path.stat().st_size
        if size < state["offset"]:
            state["offset"], state["partial"] = 0, ""
        with open(path) as f:
            f.seek(state["offset"])
            chunk = f.read()
            state["offset"] = f.tell()
        text = state["partial"] + chunk
        *lines, state["partial"] = text.split("\n")
        for line in lines:
            try:
                event = metrics_event(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if event is not None:
                progress(event)

    def loop() -> None:
        while not stop.wait(poll_s):
            read_new()
        read_new()

    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(loop,), name=f"tail-{path.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
