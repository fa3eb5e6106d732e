"""The ``compare`` flow: two outputs of one stage (or two pipeline runs) side by side in the UI.

    lmpipe run compare --set a=pretrain@latest --set b=outputs/pretrain/<fingerprint>
    lmpipe compare pretrain@latest outputs/pretrain/<fingerprint>      # the same, in the terminal

Reads two stage outputs (directories, manifests, ``stage@latest``) or two pipeline runs'
``lineage.json``; writes nothing. Publishes one markdown artifact per compared stage
(``compare-<stage>``): config diff, counts by reason, metrics, and the loss curves of both
plotted together when they are training stages. See lm/compare.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from lm.compare import Comparison, compare, comparison_rows, plot_curves
from lm.config import Config, StageRef
from lm.data.stage_io import manifest_dir
from tasks.artifacts import artifact_key, image_markdown, markdown_table


class CompareConfig(Config):
    """Two outputs of one stage, or two pipeline runs."""

    a: StageRef = Field(
        description="First output: a stage directory, its _manifest.json, `stage@latest`, "
        "or a pipeline run's lineage.json"
    )
    b: StageRef = Field(description="Second output, of the same stage (or another pipeline run's lineage.json)")
    root: str = Field("outputs", description="Artifact root that `stage@latest` refers to")

    def check_inputs(self) -> None:
        for ref in (self.a, self.b):
            if not Path(ref).exists():
                raise FileNotFoundError(
                    f"{ref!r} does not exist: give a stage output directory, its _manifest.json, or stage@latest"
                )


def comparison_markdown(cmp: Comparison, png: Path | None) -> str:
    md = [
        f"# {cmp.stage}: a vs b",
        "",
        f"- a: `{cmp.a['fingerprint']}` · `{manifest_dir(cmp.a)}`",
        f"- b: `{cmp.b['fingerprint']}` · `{manifest_dir(cmp.b)}`",
        "",
    ]
    if cmp.same:
        return "\n".join(md + ["Same fingerprint: identical output."])
    if not cmp.config:
        md += ["Config: no difference (the inputs or code version differ).", ""]
    for title, rows in comparison_rows(cmp).items():
        md += [f"## {title}", "", markdown_table(rows), ""]
    if png is not None:
        md.append(image_markdown(png, f"{cmp.stage} curves, a vs b"))
    return "\n".join(md)


@flow(name="compare", log_prints=True)
def compare_flow(config: CompareConfig) -> dict:
    """Publish the comparison; returns {stage: {"a": fingerprint, "b": fingerprint, "config_changes": n}}."""
    config.check_inputs()
    out = {}
    with tempfile.TemporaryDirectory(prefix="lmpipe-compare-") as tmp:
        for cmp in compare(config.a, config.b):
            png = plot_curves(cmp, Path(tmp) / f"{cmp.stage}.png")
            create_markdown_artifact(
                markdown=comparison_markdown(cmp, png),
                key=artifact_key("compare", cmp.stage),
                description=f"{cmp.stage}: two outputs side by side (config, counts, curves)",
            )
            out[cmp.stage] = {"a": cmp.a["fingerprint"], "b": cmp.b["fingerprint"], "config_changes": len(cmp.config)}
            print(
                f"{cmp.stage}: {len(cmp.config)} config change(s), a {cmp.a['fingerprint']} vs b {cmp.b['fingerprint']}"
            )
    return out
