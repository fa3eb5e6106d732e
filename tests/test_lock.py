"""constraints.txt pins every dependency, and what pyproject.toml asks for agrees with it.

`make setup` installs with the lock as constraints and runs requirements/check_lock.py, which
fails when the venv holds anything else; here, the lock itself is checked.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from requirements.check_lock import canonical, differences, public, read_lock

REPO = Path(__file__).resolve().parents[1]


def test_every_requirement_of_lmpipe_and_its_tests_is_locked_at_an_allowed_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = read_lock()
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(line)
        name = canonical(req.name)
        assert name in pins, f"{req.name} is required but not in constraints.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock has {name}=={pins[name]}, pyproject wants {line}"
        )
    # The versions the issue was about: torch as the Makefile installs it, a SQLAlchemy that
    # prefect 3.8.8's scheduler works with.
    assert pins["torch"] == "2.13.0" and pins["prefect"] == "3.8.8"
    assert pins["sqlalchemy"].startswith("2.0.")


def test_differences_name_what_drifted():
    pins = {"prefect": "3.8.8", "torch": "2.13.0", "sqlalchemy": "2.0.58"}
    have = {
        "prefect": "3.8.8",
        "torch": "2.13.0+cpu",
        "sqlalchemy": "2.1.9",
        "extra-pkg": "1.0",
        "pip": "25.0",
        "lmpipe": "0.1.0",
    }
    assert differences(pins, have) == [
        "extra-pkg==1.0 is installed but not in the lock",
        "sqlalchemy: installed 2.1.9, the lock says 2.0.58",
    ]
    assert differences(pins, {"prefect": "3.8.8"}) == [
        "sqlalchemy==2.0.58 is in the lock but not installed",
        "torch==2.13.0 is in the lock but not installed",
    ]
    assert public("2.13.0+cpu") == "2.13.0"
