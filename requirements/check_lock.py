"""Check that this interpreter's installed packages are exactly ``constraints.txt`` (at the repository root).

    .venv/bin/python requirements/check_lock.py          # exit 1 and list every difference

Run by ``make setup`` after installing, so a venv that drifted from the lock (a package the
lock does not name, another version, one missing) fails at once instead of in a test.
lmpipe itself (installed editable) and pip's own tooling are not in the lock.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
# Installed by venv/pip themselves, or the project itself: not dependencies to pin.
NOT_LOCKED = {"pip", "setuptools", "wheel", "lmpipe"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: a local build label does not change the release pinned."""
    return version.split("+", 1)[0]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise ValueError(f"{path}:{n}: {line!r} is not `name==version`")
        pins[canonical(name)] = version.strip()
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    out = []
    for name, version in sorted(have.items()):
        if name in NOT_LOCKED:
            continue
        if name not in pins:
            out.append(f"{name}=={version} is installed but not in the lock")
        elif public(version) != public(pins[name]):
            out.append(f"{name}: installed {version}, the lock says {pins[name]}")
    out += [f"{name}=={v} is in the lock but not installed" for name, v in sorted(pins.items()) if name not in have]
    return out


def main() -> int:
    diff = differences(read_lock(), installed())
    for line in diff:
        print(f"check_lock: {line}", file=sys.stderr)
    if diff:
        print(
            f"check_lock: this venv differs from {LOCK} in {len(diff)} package(s); "
            "`make clean setup` reinstalls from the lock, `make lock` regenerates it",
            file=sys.stderr,
        )
        return 1
    print(f"check_lock: {len(read_lock())} packages match {LOCK.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
