"""Copy each named config into the `parameters:` of its deployment in prefect.yaml.

    python deployments/sync_parameters.py          # rewrite deployments/prefect.yaml in place
    python deployments/sync_parameters.py --check  # exit 1 if a deployment's parameters are stale

A deployment named X takes configs/X-demo.yaml (or configs/X.yaml) as its default `config`,
so the UI's Run form opens filled in with the named config. Only the `parameters:` block right
under a deployment is rewritten (schedules keep theirs); the rest of the file, comments
included, is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"


def named_config(name: str) -> Path | None:
    for p in (REPO / "configs" / f"{name}-demo.yaml", REPO / "configs" / f"{name}.yaml"):
        if p.exists():
            return p
    return None


def synced(text: str) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    deployment = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"  - name: (\S+)", line):
            deployment = m.group(1)
        if re.match(r"    # = configs/", line):  # our marker line: rewritten below
            i += 1
            continue
        if deployment and re.match(r"    parameters:", line):
            i += 1
            while i < len(lines) and lines[i].startswith("      "):  # the old block
                i += 1
            cfg = named_config(deployment)
            if cfg is None:
                out.append("    parameters: {}\n")
            else:
                body = yaml.safe_dump({"config": yaml.safe_load(cfg.read_text())}, sort_keys=False, width=120)
                out.append(f"    # = configs/{cfg.name}\n    parameters:\n")
                out += [f"      {b}\n" for b in body.splitlines()]
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report whether prefect.yaml is in sync")
    args = ap.parse_args(argv)
    old = PREFECT_YAML.read_text()
    new = synced(old)
    if args.check:
        if new != old:
            print(f"{PREFECT_YAML} is out of sync with configs/: run python deployments/sync_parameters.py", file=sys.stderr)
            return 1
        return 0
    PREFECT_YAML.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
