"""The reliability report: one row per (fault, stage) trial set, printed by `make chaos`.

Reliability tests (tests/reliability/) call ``chaos_record(...)`` (a fixture from
tests/reliability/conftest.py) *before* asserting, so a failing trial still shows up in the
table. Rows go to the JSON-lines file ``LMPIPE_CHAOS_REPORT`` (``make chaos``: outputs/chaos.jsonl;
otherwise tests/conftest.py makes a temporary one), which tests/conftest.py prints at the end
of the pytest session, with the rows of every xdist worker.

Run as a script to print the table of a report file; exit status 1 if any row lost or
duplicated a record or did not survive every trial:

    python tests/chaos_report.py outputs/chaos.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

# How many trials (distinct seeds / kill points) each fault runs: 1-2 in `make test`, more
# under `make chaos`.
DEFAULT_TRIALS = 2


def chaos_trials() -> int:
    raw = os.environ.get("LMPIPE_CHAOS_TRIALS", str(DEFAULT_TRIALS))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"LMPIPE_CHAOS_TRIALS={raw!r} must be a positive integer")
    return int(raw)


@dataclass
class Row:
    fault: str  # e.g. "SIGKILL flow process", "disk full during write"
    stage: str  # e.g. "extract", "tokenize", "pretrain"
    trials: int
    survived: int  # trials where the run completed (after rerun/retry) with exact output
    lost: int  # records missing from the final output, summed over trials (must be 0)
    duplicated: int  # records present more than once, summed over trials (must be 0)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.survived == self.trials and self.lost == 0 and self.duplicated == 0


_lock = threading.Lock()


def record(
    fault: str, stage: str, trials: int, survived: int, lost: int = 0, duplicated: int = 0, note: str = ""
) -> Row:
    row = Row(fault, stage, int(trials), int(survived), int(lost), int(duplicated), note)
    with _lock:
        path = os.environ.get("LMPIPE_CHAOS_REPORT")
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(row)) + "\n")
    return row


def lost_and_duplicated(expected_ids, got_ids) -> tuple[int, int]:
    """Records of ``expected_ids`` missing from ``got_ids``, and extra copies in ``got_ids``."""
    from collections import Counter

    want, got = Counter(expected_ids), Counter(got_ids)
    lost = sum((want - got).values())
    duplicated = sum(max(0, n - want.get(k, 0)) for k, n in got.items() if k in want) + sum(
        n for k, n in got.items() if k not in want
    )
    return lost, duplicated


def format_table(rows: list[Row]) -> str:
    header = ["fault", "stage", "trials", "survived", "records lost", "records duplicated", "note"]
    body = [[r.fault, r.stage, str(r.trials), str(r.survived), str(r.lost), str(r.duplicated), r.note] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    bad = [r for r in rows if not r.ok]
    out.append(
        f"{len(rows)} rows, {sum(r.trials for r in rows)} trials, "
        f"{sum(r.lost for r in rows)} records lost, {sum(r.duplicated for r in rows)} duplicated, "
        f"{len(bad)} rows with failures"
    )
    return "\n".join(out)


def load(path: str | Path) -> list[Row]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"chaos report {p} not found; run `make chaos` (it writes outputs/chaos.jsonl)")
    return [Row(**json.loads(line)) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/chaos_report.py REPORT.jsonl", file=sys.stderr)
        return 2
    rows = load(argv[0])
    if not rows:
        print(f"{argv[0]} has no rows: no reliability test recorded a result", file=sys.stderr)
        return 1
    print(format_table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
