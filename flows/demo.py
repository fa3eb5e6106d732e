"""``lmpipe demo``: the pipeline on real crawl data that any fresh machine can get.

Inputs (unless ``--source`` is given): the sample web archives shipped inside the ``pywb``
wheel on PyPI (WARC, ARC, plain and gzip, some deliberately broken), fetched once with
``pip download --no-deps`` into the lmpipe cache, plus the real Common Crawl WARCs in
``../shared/reference/commoncrawl`` (or ``$LMPIPE_REFERENCE/commoncrawl``) when present.
The demo runs the ``data`` flow with ``configs/data-demo.yaml`` and prints where the outputs
are and how to browse them in the Prefect UI. Later issues add stages to the chain.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from lm.cache import fetch_from_package

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "data-demo.yaml"
PYWB_VERSION = "2.10.0"


def demo_sources() -> list[str]:
    """The default demo inputs: pywb's sample archives (+ the shared Common Crawl samples)."""
    warcs = fetch_from_package("pywb", PYWB_VERSION, "*sample_archive/warcs/*", "pywb-warcs")
    sources = [str(warcs)]
    ref = Path(os.environ.get("LMPIPE_REFERENCE", REPO.parent / "shared" / "reference")) / "commoncrawl"
    if ref.is_dir():
        sources.append(str(ref / "*.warc.gz"))
    return sources


def run_demo(args) -> int:
    from flows.data import DataConfig, data_flow
    from lm.data.shards import describe

    base = yaml.safe_load(DEMO_CONFIG.read_text()) if DEMO_CONFIG.exists() else {}
    base["sources"] = list(args.source) if args.source else demo_sources()
    base["root"] = str(Path(args.root).resolve())
    cfg = DataConfig.model_validate(base)
    print(f"lmpipe demo: data flow on {len(cfg.sources)} source(s):")
    for s in cfg.sources:
        print(f"  {s}")
    manifests = data_flow(config=cfg)

    print("\n" + "=" * 78)
    for stage, manifest in manifests.items():
        print(describe(Path(manifest).parent, num_samples=2, width=160))
        print()
    print(f"Outputs are under {cfg.root}:")
    for stage, manifest in manifests.items():
        print(f"  {stage:<10} {Path(manifest).parent}")
    lmpipe = "lmpipe" if os.environ.get("VIRTUAL_ENV") else ".venv/bin/lmpipe"
    print(
        f"""
Look at a stage:      {lmpipe} inspect {Path(manifests['extract']).parent}
Rerun (no work done): {lmpipe} demo --root {args.root}

Browse runs, task runs and artifacts (counts tables, sample documents) in the Prefect UI:
  prefect server start --host 127.0.0.1               # in one terminal; UI at http://127.0.0.1:4200
  export PREFECT_API_URL=http://127.0.0.1:4200/api    # in the terminal that runs flows
  {lmpipe} demo --root {args.root}                    # this run then shows up in the UI
Without PREFECT_API_URL, flows run on a temporary local server that stops when they end."""
    )
    return 0
