"""`lmpipe server` as a hostile local user meets it: loopback only, authentication required,
no run-chosen command or environment, roots confined, artifact files read-only and confined.

All against the session's real `lmpipe server` (tests/e2e/conftest.py).
"""

from __future__ import annotations

import base64
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.helpers import api_client, data_config, run_by_name
from tests.reliability.test_security import _listening

pytestmark = pytest.mark.slow


def status(url: str, auth: str | None = None, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, method=method, headers=headers), timeout=30
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_server_listens_on_loopback_and_refuses_unauthenticated_requests(local_prefect):
    api = local_prefect.api
    for url in (api, local_prefect.files):
        port = int(urllib.parse.urlsplit(url).port)
        assert _listening(port) == {"127.0.0.1"}, (url, _listening(port))
    assert status(f"{api}/health")[0] == 200  # probes stay open
    body = b'{"limit": 1}'
    assert status(f"{api}/flow_runs/filter", method="POST", body=body)[0] == 401
    assert status(f"{api}/flow_runs/filter", "lmpipe:wrong", method="POST", body=body)[0] == 401
    assert status(f"{api}/flow_runs/filter", local_prefect.auth, method="POST", body=body)[0] == 200
    # The UI asks for the password: its settings say basic auth.
    code, settings = status(f"{local_prefect.ui}/ui-settings")
    assert code == 200 and b'"auth":"BASIC"' in settings.replace(b" ", b"")
    # The secret: a 0600 file, in no log.
    auth_file = local_prefect.log_dir / "lmpipe-auth"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    password = local_prefect.auth.split(":", 1)[1]
    leaks = [
        p
        for p in local_prefect.log_dir.rglob("*")
        if p.is_file() and p != auth_file and password.encode() in p.read_bytes()
    ]
    assert not leaks, leaks


def test_a_run_cannot_choose_its_command_or_environment(local_prefect, deployed, tmp_path):
    from prefect.exceptions import PrefectHTTPStatusError

    marker = tmp_path / "pwned"
    with api_client(local_prefect) as client:
        dep = client.read_deployment_by_name("data/data")
        before = len(client.read_flow_runs(limit=200))
        for job_variables in (
            {"command": f"touch {marker}"},
            {"env": {"LD_PRELOAD": "/tmp/evil.so"}},
            {"working_dir": "/"},
        ):
            with pytest.raises(PrefectHTTPStatusError) as e:
                client.create_flow_run_from_deployment(dep.id, job_variables=job_variables)
            assert e.value.response.status_code == 422, e.value.response.text
        assert len(client.read_flow_runs(limit=200)) == before  # no run was created
        pool = client.read_work_pool("cpu")
    assert "command" not in pool.base_job_template["job_configuration"]
    assert not marker.exists()


def test_a_run_writing_outside_the_allowed_roots_fails_before_work(local_prefect, deployed, reference):
    outside = Path(tempfile.mkdtemp(prefix="lmpipe-outside-")) / "out"  # not under the server's --allow-root
    try:
        run = run_by_name(local_prefect, "data/data", {"config": data_config(outside, reference)})
        assert run.state is not None and run.state.is_failed(), run.state
        assert "outside the roots this server allows" in run.state.message or "outside the roots" in str(run.state), (
            run.state
        )
        assert not outside.exists()
    finally:
        outside.parent.rmdir()


def test_artifact_files_are_served_read_only_signed_and_confined(local_prefect, tmp_path):
    from tasks.artifacts import files_url, link_key

    key, base = link_key(local_prefect.auth), local_prefect.files
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "_manifest.json").write_text('{"stage": "x"}')
    secret_dir = Path(tempfile.mkdtemp(prefix="lmpipe-secret-"))
    (secret_dir / "secret.txt").write_text("top secret")
    (tmp_path / "stage" / "escape").symlink_to(secret_dir)
    try:
        f = str(tmp_path / "stage" / "_manifest.json")
        assert status(files_url(f, base, key)) == (200, b'{"stage": "x"}')
        assert status(f"{base}/files{f}")[0] == 401  # no signature, no auth
        assert status(f"{base}/files{f}?sig=" + "0" * 32)[0] == 401
        assert status(f"{base}/files{f}", local_prefect.auth) == (200, b'{"stage": "x"}')  # basic auth as the API
        assert status(files_url(f, base, link_key("lmpipe:other")))[0] == 401  # signed with another secret
        # Escapes, even with a valid signature for the exact path asked for: 404.
        for bad in (
            f"{tmp_path}/stage/../../../../etc/passwd",
            f"{tmp_path}/stage/escape/secret.txt",
            "/etc/passwd",
            str(secret_dir / "secret.txt"),
        ):
            code, body = status(files_url(bad, base, key))
            assert code == 404 and b"secret" not in body and b"root:" not in body, (bad, code)
        code, body = status(
            f"{base}/files{urllib.parse.quote(str(tmp_path))}/stage/%2e%2e/%2e%2e/x?sig=0", local_prefect.auth
        )
        assert code == 404
        # A listing links each entry with its own signature; the escaping symlink is not listed.
        code, listing = status(files_url(str(tmp_path / "stage"), base, key))
        assert code == 200 and b"_manifest.json" in listing and b"escape" not in listing
        # Read-only: no method writes.
        for method in ("PUT", "POST", "DELETE"):
            assert status(files_url(f, base, key), method=method, body=b"x")[0] in (404, 405, 501)
        assert (tmp_path / "stage" / "_manifest.json").read_text() == '{"stage": "x"}'
    finally:
        shutil.rmtree(secret_dir)
