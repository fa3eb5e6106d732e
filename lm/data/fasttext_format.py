"""fastText ``.bin`` files read and relabelled without loading the model.

A model's labels live in its dictionary, near the start of the file, so a config can be
checked against them (``model_labels``) in microseconds, and a model can be written under
another label layout (``relabel_model``: ours ``wiki``/``cc`` → DCLM's ``hq``/``cc``) by
rewriting those strings and copying every other byte. Labels never enter the hashed n-gram
buckets, so a relabelled model gives the same probabilities under the new names.

Layout (fastText 0.9, ``FastText::saveModel``): magic int32, version int32; ``Args`` (12
int32 and one float64); dictionary header (size int32, nwords int32, nlabels int32,
ntokens int64, pruneidx_size int64); ``size`` entries (NUL-terminated string, count int64,
type int8: 0 word, 1 label); pruneidx pairs; then the matrices.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

MAGIC = 793712314
_ARGS_BYTES = 12 * 4 + 8
_LABEL_PREFIX = "__label__"


def _read_dictionary(buf: bytes, path: str) -> tuple[int, int, list[tuple[int, int, str, int]]]:
    """(start of entries, end of entries, [(start, end, string, type)]) of the model in ``buf``."""
    magic, version = struct.unpack_from("<ii", buf, 0)
    if magic != MAGIC:
        raise ValueError(f"{path!r} is not a fastText model (bad magic number); give a .bin written by fastText")
    if version > 12:
        raise ValueError(f"{path!r} is fastText format version {version}; this reader knows versions up to 12")
    pos = 8 + _ARGS_BYTES
    size, _nwords, _nlabels, _ntokens, _pruneidx = struct.unpack_from("<iiiqq", buf, pos)
    pos += 28
    start = pos
    entries = []
    for _ in range(size):
        end = buf.index(b"\0", pos)
        word = buf[pos:end].decode("utf-8", "surrogateescape")
        entry_type = buf[end + 9]
        entries.append((pos, end + 10, word, entry_type))
        pos = end + 10
    return start, pos, entries


def model_labels(path: str | os.PathLike) -> list[str]:
    """The labels of a fastText supervised model, without ``__label__``, in the model's order."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"classifier model {str(path)!r} does not exist; give the path of a fastText .bin")
    _, _, entries = _read_dictionary(p.read_bytes(), str(path))
    return [w.removeprefix(_LABEL_PREFIX) for _, _, w, t in entries if t == 1]


def relabel_model(src: str | os.PathLike, dst: str | os.PathLike, mapping: dict[str, str]) -> Path:
    """Write ``src`` to ``dst`` with its labels renamed by ``mapping`` (names without ``__label__``).

    Every label of the model must be a key or left unnamed; renaming two labels to one name
    is refused (the model would then have two rows with one name)."""
    buf = Path(src).read_bytes()
    _, _, entries = _read_dictionary(buf, str(src))
    labels = [w.removeprefix(_LABEL_PREFIX) for _, _, w, t in entries if t == 1]
    unknown = sorted(set(mapping) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not in {str(src)!r} (its labels: {labels})")
    renamed = [mapping.get(lab, lab) for lab in labels]
    if len(set(renamed)) != len(renamed):
        raise ValueError(f"relabelling {labels} with {mapping} gives duplicate labels {renamed}")
    for name in renamed:
        if not name or any(ch.isspace() for ch in name) or "\0" in name:
            raise ValueError(f"label {name!r} must be one non-empty word: fastText reads labels as tokens")
    out = bytearray()
    last = 0
    for start, end, word, entry_type in entries:
        if entry_type != 1:
            continue
        label = word.removeprefix(_LABEL_PREFIX)
        out += buf[last:start]
        out += (_LABEL_PREFIX + mapping.get(label, label)).encode("utf-8")
        out += buf[end - 10 : end]  # NUL, count, type
        last = end
    out += buf[last:]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.write_bytes(bytes(out))
    os.replace(tmp, dst)
    return dst
