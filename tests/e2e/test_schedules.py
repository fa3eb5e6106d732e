"""Schedules on the real server: an interval schedule turned on through the API creates runs
that a worker executes, and `lmpipe deploy` keeps what a person changed on a schedule.

Before SQLAlchemy was pinned to 2.0.x (constraints.txt), prefect 3.8.8's scheduler
failed every loop with "Can't evaluate bulk DML statement" and no scheduled run ever existed.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from flows.server import _api_request, deploy
from tests.e2e.helpers import api_client, data_config

pytestmark = pytest.mark.slow


def data_deployment(server) -> dict:
    with api_client(server) as client:
        dep = client.read_deployment_by_name("data/data")
    return _api_request(f"{server.api}/deployments/{dep.id}", auth=server.auth)


def test_interval_schedule_turned_on_creates_runs_a_worker_completes(local_prefect, deployed, reference, tmp_path):
    api, auth = local_prefect.api, local_prefect.auth
    dep = data_deployment(local_prefect)
    # First run 30 s from now, then hourly: the scheduler (every 5 s here) creates it before it
    # is due (a time already past when it looks is not scheduled), and one run is due in the test.
    anchor = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).isoformat()
    schedule = {
        "schedule": {"interval": 3600, "anchor_date": anchor, "timezone": "UTC"},
        "parameters": {"config": data_config(tmp_path, reference)},
        "slug": "e2e-interval",
    }
    created = _api_request(f"{api}/deployments/{dep['id']}/schedules", [{**schedule, "active": False}], auth=auth)
    sid = created[0]["id"]
    try:
        # Turned on as the UI's toggle does it: the whole schedule with active=true (a PATCH of
        # `active` alone resets the schedule's parameters to {} in prefect 3.8.8).
        _api_request(
            f"{api}/deployments/{dep['id']}/schedules/{sid}", {**schedule, "active": True}, auth=auth, method="PATCH"
        )

        def ours():
            try:
                runs = _api_request(
                    f"{api}/flow_runs/filter",
                    {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 50},
                    auth=auth,
                )
            except (OSError, RuntimeError):  # a busy SQLite server (timeout, 503): ask again at the next poll
                return []
            return [r for r in runs if r["auto_scheduled"] and r["parameters"]["config"]["root"] == str(tmp_path)]

        deadline, runs = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            runs = ours() or runs
            if any(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs):
                break
            time.sleep(2)
        log = (local_prefect.log_dir / "lmpipe-server.log").read_text(errors="replace")
        assert "Can't evaluate bulk DML statement" not in log
        assert runs, f"the scheduler created no run in 240 s; see {local_prefect.log_dir}/lmpipe-server.log"
        states = sorted(r["state_type"] for r in runs)
        assert "COMPLETED" in states, f"scheduled runs: {states}"
        assert list(tmp_path.glob("*/*/_manifest.json")), "the scheduled run completed but wrote no stage"
    finally:
        _api_request(f"{api}/deployments/{dep['id']}/schedules/{sid}", auth=auth, method="DELETE")


def test_redeploy_keeps_a_schedule_turned_on_and_its_parameters(local_prefect, deployed, tmp_path):
    api, auth = local_prefect.api, local_prefect.auth
    dep = data_deployment(local_prefect)
    (weekly,) = [s for s in dep["schedules"] if s["slug"] == "weekly-cc-ingest"]
    assert weekly["active"] is False  # as prefect.yaml ships it
    mine = {"config": {"sources": ["cc://CC-MAIN-2025-05?kind=wet&files=2"], "root": str(tmp_path), "max_workers": 2}}
    url = f"{api}/deployments/{dep['id']}/schedules/{weekly['id']}"
    _api_request(url, {"active": True, "parameters": mine}, auth=auth, method="PATCH")  # a person's edits in the UI
    try:
        out = deploy(api, ["data"], env={"PREFECT_API_AUTH_STRING": auth})
        (after,) = [s for s in data_deployment(local_prefect)["schedules"] if s["slug"] == "weekly-cc-ingest"]
        assert (after["active"], after["parameters"]) == (True, mine), after
        assert after["schedule"]["cron"] == "0 3 * * 1"  # the timing still comes from prefect.yaml
        assert "kept the server's active state and parameters of schedule data/weekly-cc-ingest" in out
    finally:
        (now,) = [s for s in data_deployment(local_prefect)["schedules"] if s["slug"] == "weekly-cc-ingest"]
        _api_request(
            f"{api}/deployments/{dep['id']}/schedules/{now['id']}",
            {"active": False, "parameters": weekly["parameters"]},
            auth=auth,
            method="PATCH",
        )
