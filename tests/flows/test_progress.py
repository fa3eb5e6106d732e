"""Progress and live metrics (tasks/progress.py) read back from a real Prefect server's API:
the progress artifact reaches 100, log lines come at the fixed cadence, the closing artifact
carries the curve plot. The align and scaling flows are checked in their own tests with the
same ``assert_progress``; pretraining (a subprocess followed through its metrics.jsonl) here."""

import json
import re
import threading
import time

from artifact_checks import assert_progress, latest_artifact, run_logs  # tests/flows is on sys.path
from prefect import flow

from tasks.pretrain import PretrainConfig
from tasks.progress import Progress, tail_metrics


def test_progress_cadence_artifacts_and_metrics_tail(prefect_harness, tmp_path):
    """A 40-step loop logs every 2nd step (20 lines) plus its evaluations; a metrics.jsonl written by
    another thread (as a trainer subprocess writes it) is followed to the end."""
    metrics = tmp_path / "metrics.jsonl"

    def trainer():
        with open(metrics, "a") as f:
            for step in range(1, 31):
                f.write(
                    json.dumps(
                        {"kind": "train", "step": step, "loss": 5 - step / 10, "tokens_per_s": 1000.0, "mfu": 0.01}
                    )
                    + "\n"
                )
                if step % 10 == 0:
                    f.write(json.dumps({"kind": "eval", "step": step, "val_loss": 5 - step / 9}) + "\n")
                f.flush()
                time.sleep(0.01)

    @flow(name="progress-toy")
    def toy():
        loop = Progress("toy", 40, max_silence_s=3600)
        loop({"step": 0, "eval_reward": 0.0})
        for step in range(1, 41):
            loop({"step": step, "loss": 1 / step, "tokens": 100, "reward": step / 40})
            if step % 20 == 0:
                loop({"step": step, "eval_reward": step / 40})
        loop.finish("Toy loop", note="a note")
        tailed = Progress("tailed", 30, max_silence_s=3600)
        with tail_metrics(metrics, tailed, poll_s=0.05):
            t = threading.Thread(target=trainer)
            t.start()
            t.join()
        tailed.finish("Tailed")
        try:
            with Progress("broken", 10) as broken:
                for step in range(1, 4):
                    broken({"step": step, "loss": 1.0})
                raise FloatingPointError("loss is not finite")
        except FloatingPointError:
            pass
        return loop.logged, tailed.logged

    state = toy(return_state=True)
    logged, tailed = state.result()
    run = state.state_details.flow_run_id
    steps = assert_progress("toy", flow_run_id=run, total=40, every=2)
    assert steps == [0] + [s for s in range(2, 41, 2) for _ in range(2 if s % 20 == 0 else 1)]  # evaluations at 20, 40
    last = logged[-1]
    assert last["step"] == 40 and last["eval_reward"] == 1.0 and last["loss"] == 0.025 and last["tokens_per_s"] > 0
    assert "a note" in latest_artifact("toy-curves").data and "| step |" in latest_artifact("toy-curves").data
    messages = run_logs(run)
    assert any(
        re.match(r"toy step 40/40 \(100%\) · loss 0\.025 · reward 1 · eval_reward 1 · [\d,]+ tok/s", m)
        for m in messages
    ), messages[-5:]
    # the tail saw every train row: the cadence (every 2nd of 30) and the 3 evaluations, with the trainer's throughput
    assert_progress("tailed", flow_run_id=run, total=30, every=2)
    assert (
        tailed[-1]["step"] == 30
        and tailed[-1]["val_loss"] == round(5 - 30 / 9, 4)
        and tailed[-1]["tokens_per_s"] == 1000.0
    )
    # a loop that raised says where and why on its artifact (and in the log), at the share it reached
    broken = latest_artifact("broken-progress")
    assert (
        float(broken.data) == 30.0
        and broken.description == "broken: FAILED at step 3/10: FloatingPointError: loss is not finite"
    )
    assert broken.description in run_logs(run)


def test_pretrain_progress_from_its_metrics_file(prefect_harness, reference, tmp_path):
    from flows.pretrain import pretrain_flow

    train = dict(
        model=dict(vocab_size=257, context_length=16, d_model=16, num_layers=1, num_heads=1, d_ff=32),
        batch_size=4,
        max_steps=40,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=20,
        eval_batches=1,
        checkpoint_interval=40,
        log_interval=40,
        device="cpu",
    )
    cfg = PretrainConfig(
        root=str(tmp_path),
        text_file=str(reference / "assignment1-basics/fixtures/corpus.en"),
        train=train,
        sample_prompts=["The "],
        sample_tokens=4,
        timeout_s=300,
        retries=0,
    )
    state = pretrain_flow(config=cfg, return_state=True)
    assert state.is_completed()
    steps = assert_progress("pretrain", flow_run_id=state.state_details.flow_run_id, total=40, every=2)
    assert steps[-1] == 40
    curves = latest_artifact("pretrain-curves").data
    assert "status completed" in curves and "| step |" in curves and "tokens_per_s" in curves
