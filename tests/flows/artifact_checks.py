"""Read a run's artifacts and logs back from the Prefect API (the tests' view of what a person sees in the UI)."""

import re


def latest_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            limit=1, sort=ArtifactSort.CREATED_DESC, artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key!r}"
    return found[0]


def run_logs(flow_run_id) -> list[str]:
    """Every log message of a flow run and its task runs, in order (after sending what is queued)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), sort=LogSort.TIMESTAMP_ASC
        )
    return [log.message for log in logs]


def logged_steps(messages: list[str], name: str, unit: str = "step") -> list[int]:
    return [int(m.group(1)) for msg in messages if (m := re.match(rf"{re.escape(name)} {unit} (\d+)/\d+", msg))]


def assert_progress(
    name: str,
    *,
    flow_run_id=None,
    total: int | None = None,
    every: int | None = None,
    plot: bool = True,
    unit: str = "step",
) -> list[int]:
    """The progress artifact at 100, the closing artifact with its plot, and (given the run) the
    cadence: every multiple of ``every`` up to ``total`` has its log line. Returns the logged steps."""
    progress = latest_artifact(f"{name}-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0, (progress.data, progress.description)
    curves = latest_artifact(f"{name}-curves")
    assert curves.type == "markdown"
    if plot:
        assert "data:image/png;base64," in curves.data
    steps = []
    if flow_run_id is not None:
        steps = logged_steps(run_logs(flow_run_id), name, unit)
        assert set(range(every, total + 1, every)) <= set(steps), (every, total, steps)
        assert len(steps) <= total // every + 8, steps  # the cadence, evaluations, and a few heartbeats at most
    return steps
