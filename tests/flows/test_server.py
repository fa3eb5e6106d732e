"""flows/server.py without starting a server: the fast failures and the environment it builds.
(The real server, workers and Ctrl-C are exercised by tests/e2e.)"""

from __future__ import annotations

import os
import socket

import pytest

from flows.server import REPO, LocalPrefect, api_url, child_env, deploy, deployment_entries


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_deploy_without_a_server_says_how_to_start_one():
    with pytest.raises(RuntimeError, match="lmpipe server"):
        deploy(api_url("127.0.0.1", closed_port()))


def test_children_import_this_checkout_and_find_the_api():
    env = child_env("http://127.0.0.1:1/api", {"X": "1"})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert env["LMPIPE_REPO"] == str(REPO) and env["PREFECT_API_URL"] == "http://127.0.0.1:1/api" and env["X"] == "1"


def test_ui_and_api_urls_for_a_wildcard_bind():
    lp = LocalPrefect(host="0.0.0.0", port=4242)
    assert (lp.api, lp.ui) == ("http://127.0.0.1:4242/api", "http://127.0.0.1:4242")


def test_only_process_pools_are_started_here():
    from flows.server import default_job_template

    assert "job_configuration" in default_job_template("process")
    with pytest.raises(ValueError, match="k8s-gpu-job-template"):
        default_job_template("kubernetes")


def test_deployment_entries_know_which_flows_exist(tmp_path):
    f = tmp_path / "prefect.yaml"
    f.write_text(
        "deployments:\n"
        "  - {name: data, entrypoint: flows/data.py:data_flow}\n"
        "  - {name: ghost, entrypoint: flows/ghost.py:ghost_flow}\n"
        "  - {name: wrong-func, entrypoint: flows/data.py:no_such_flow}\n"
    )
    assert {e["name"]: e["exists"] for e in deployment_entries(f)} == {
        "data": True,
        "ghost": False,
        "wrong-func": False,
    }


def test_the_auth_secret_is_generated_once_kept_0600_and_sent_only_to_our_api(tmp_path, monkeypatch):
    import stat

    from flows import server_auth

    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("LMPIPE_AUTH_FILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    path = server_auth.auth_path()
    secret = server_auth.load_or_create_auth(path)
    assert secret.startswith("lmpipe:") and len(secret) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server_auth.load_or_create_auth(path) == secret  # read, not regenerated
    # Sent only to the API that `lmpipe server` recorded, never to another PREFECT_API_URL.
    assert server_auth.client_auth("http://127.0.0.1:4200/api") is None
    server_auth.write_state(tmp_path, api="http://127.0.0.1:4200/api")
    assert server_auth.client_auth("http://127.0.0.1:4200/api") == secret
    assert server_auth.client_auth("http://evil.example:4200/api") is None
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        server_auth.read_auth(path)
    assert secret.split(":")[1] not in str(pytest.raises(PermissionError, server_auth.read_auth, path).value)


def test_the_process_pools_template_offers_a_run_nothing_that_chooses_what_runs():
    from flows.server import RUN_SETTABLE, locked_job_template

    t = locked_job_template("process")
    assert set(t["variables"]["properties"]) == set(RUN_SETTABLE) == set(t["job_configuration"])
    assert t["variables"]["additionalProperties"] is False
    assert "{{ command }}" not in str(t) and "{{ env }}" not in str(t) and "{{ working_dir }}" not in str(t)
