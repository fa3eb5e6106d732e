"""Record what code reads while it runs: files opened and environment variables looked up.

Files: an audit hook on ``open`` (``builtins.open``, ``os.open``, ``io.open``: Python code,
numpy, torch) plus the C/C++/Rust readers lm/ calls with a path (pyarrow's Parquet readers,
fastText, safetensors), wrapped so they raise the same ``open`` event. Temporary
directories created (``tempfile.mkdtemp``) and files opened for writing are recorded too,
so a stage reading back its own scratch files is told apart from one reading an input.

Environment: ``os.environ`` is replaced by an ``os._Environ`` over the same data that notes
each variable looked up, with the file of the frame that asked (code that copies the whole
environment to pass it on, ``{**os.environ}``, is noted as ``*``).

A subprocess is covered through ``sitecustomize``: :func:`subprocess_env` gives the
variables that make a child Python install the same recorder and append what it read to a
log that :meth:`Recorder.merge_log` reads back.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

LOG_ENV = "LMPIPE_TEST_READ_LOG"  # read by this module only (sitecustomize of a child process)
_HERE = Path(__file__).resolve().parent
_SKIP_FRAMES = {os.__file__, __file__}
_active: Recorder | None = None
_hook_installed = False
_lock = threading.Lock()

# Readers lm/ calls with a path whose open happens below Python: (module, attribute, how to find the path).
NATIVE_READERS = [
    ("pyarrow.parquet", "read_table", 0),
    ("pyarrow.parquet", "read_schema", 0),
    ("pyarrow.parquet", "ParquetFile", 0),
    ("fasttext", "load_model", 0),
    ("safetensors.torch", "load_file", 0),
    ("lm.train.checkpoint", "load_file", 0),
]


class Recorder:
    """What was read while this recorder was active."""

    def __init__(self):
        self.reads: set[str] = set()
        self.written: set[str] = set()
        self.temp_dirs: set[str] = set()
        self.env: dict[str, set[str]] = {}  # variable -> files of the frames that read it
        self.child_reads: set[str] = set()  # what child processes read (also in ``reads``)

    def note_open(self, path, mode, flags) -> None:
        if isinstance(path, int):
            return
        try:
            p = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        )
        reading = not (isinstance(mode, str) and any(c in mode for c in "wax")) and not (
            isinstance(flags, int) and flags & os.O_ACCMODE == os.O_WRONLY
        )
        with _lock:
            if writing:
                self.written.add(p)
            if reading and p not in self.written:
                self.reads.add(p)

    def note_env(self, name: str) -> None:
        f = sys._getframe(2)
        while f is not None and (f.f_code.co_filename in _SKIP_FRAMES or "collections" in f.f_code.co_filename):
            f = f.f_back
        with _lock:
            self.env.setdefault(name, set()).add(f.f_code.co_filename if f is not None else "?")

    def merge_log(self, path: str | os.PathLike) -> None:
        """Add what child processes appended to ``path`` (see :func:`subprocess_env`)."""
        p = Path(path)
        if not p.exists():
            return
        for line in p.read_text().splitlines():
            rec = json.loads(line)
            self.reads |= set(rec["reads"]) - set(rec["written"])
            self.child_reads |= set(rec["reads"])
            self.written |= set(rec["written"])
            self.temp_dirs |= set(rec["temp_dirs"])
            for name, files in rec["env"].items():
                self.env.setdefault(name, set()).update(files)


def _audit(event: str, args) -> None:
    rec = _active
    if rec is None:
        return
    if event == "open":
        rec.note_open(*args)
    elif event == "tempfile.mkdtemp":
        with _lock:
            rec.temp_dirs.add(os.path.abspath(os.fsdecode(args[0])))


class _RecordingEnviron(os._Environ):
    """``os.environ`` over the same data, noting every variable looked up."""

    def __init__(self, base: os._Environ):
        super().__init__(base._data, base.encodekey, base.decodekey, base.encodevalue, base.decodevalue)

    _copying = threading.local()  # keys of an iteration in progress: ``{**os.environ}`` reads them all, noted as "*"

    def __getitem__(self, key):
        pending = getattr(self._copying, "keys", None)
        if pending and pending[-1] == key:
            pending.pop()
        elif _active is not None:
            _active.note_env(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        if _active is not None:
            _active.note_env(key)
        return self.encodekey(key) in self._data

    def __iter__(self):
        if _active is not None:
            _active.note_env("*")
        keys = list(super().__iter__())
        self._copying.keys = keys[::-1]
        return iter(keys)


def _wrap_native(module: str, attr: str, index: int) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    orig = getattr(mod, attr, None)
    if orig is None or getattr(orig, "_read_audit", False):
        return

    def note(args, kwargs):
        src = args[index] if len(args) > index else next(iter(kwargs.values()), None)
        if isinstance(src, (str, os.PathLike)):
            sys.audit("open", os.fspath(src), "r", 0)

    if isinstance(orig, type):
        wrapped = type(
            orig.__name__,
            (orig,),
            {
                "__init__": lambda self, *a, **k: (note(a, k), orig.__init__(self, *a, **k))[1],
                "_read_audit": True,
                "__module__": orig.__module__,
            },
        )
    else:

        def wrapped(*a, **k):
            note(a, k)
            return orig(*a, **k)

        wrapped._read_audit = True
    setattr(mod, attr, wrapped)


def install() -> None:
    """Install the hook, the environment wrapper and the native-reader wrappers (once per process)."""
    global _hook_installed
    if _hook_installed:
        return
    sys.addaudithook(_audit)  # cannot be removed: it does nothing while no recorder is active
    os.environ = _RecordingEnviron(os.environ)  # noqa: B003 (a recording view of the same environment)
    for module, attr, index in NATIVE_READERS:
        _wrap_native(module, attr, index)
    _hook_installed = True


class recording:
    """``with recording() as rec:`` — every read in this process (all threads) goes to ``rec``."""

    def __enter__(self) -> Recorder:
        global _active
        install()
        self.rec = Recorder()
        _active = self.rec
        return self.rec

    def __exit__(self, *exc) -> None:
        global _active
        _active = None


def subprocess_env(log: str | os.PathLike) -> dict[str, str]:
    """Variables that make a child Python record its reads into ``log`` (``sitecustomize`` here)."""
    return {
        LOG_ENV: str(log),
        "PYTHONPATH": os.pathsep.join([str(_HERE / "sitecustom"), os.environ.get("PYTHONPATH", "")]),
    }


def start_child() -> None:
    """Called by sitecustomize in a child: record from now until exit, then append to the log."""
    import atexit

    log = os.environ.get(LOG_ENV)
    if not log:
        return
    rec = recording().__enter__()

    def dump() -> None:
        global _active
        _active = None
        with open(log, "a") as f:
            f.write(
                json.dumps(
                    {
                        "reads": sorted(rec.reads),
                        "written": sorted(rec.written),
                        "temp_dirs": sorted(rec.temp_dirs),
                        "env": {k: sorted(v) for k, v in rec.env.items()},
                    }
                )
                + "\n"
            )

    atexit.register(dump)
