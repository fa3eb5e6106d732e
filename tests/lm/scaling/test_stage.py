"""The scaling stage from plain Python: the whole sweep, fits and verdict with Prefect never imported."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from lm.scaling.stage import run_scaling
    from lm.scaling.sweep import ScalingConfig
    from lm.train.data import byte_tokens, write_token_shards

    text, root = sys.argv[1], Path(sys.argv[2])
    ids = byte_tokens(Path(text).read_text())
    cut = int(len(ids) * 0.9)
    write_token_shards(root / "tokens", {"train": [ids[:cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256)
    cfg = ScalingConfig(corpus=str(root / "tokens"), root=str(root), budgets=[1e9, 2e9],
                        model_sizes=[16000, 33000, 53000], context_length=32, batch_size=4, eval_batches=2,
                        min_steps=5, target_budget=1e11, num_bootstrap=10, device="cpu")
    seen = []
    result = run_scaling(cfg, on_run=lambda row, done, total: seen.append([row["status"], done, total]))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "prefect")
    print(json.dumps({"prefect": loaded, "result": result, "seen": seen}))
""")


def test_run_scaling_without_prefect(reference, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(reference / "assignment1-basics/fixtures/corpus.en"), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["prefect"] == []
    result = out["result"]
    assert (result["runs"], result["trained"], result["cached"], result["failed"]) == (6, 6, 0, 0)
    assert out["seen"] == [["completed", i, 6] for i in range(1, 7)]
    stage = Path(result["manifest"]).parent
    m = json.loads(Path(result["manifest"]).read_text())
    assert m["stage"] == "scaling" and m["version"] == "2" and m["counts"]["runs_completed"] == 6
    fits = json.loads((stage / "fits.json").read_text())
    assert set(fits["verdict"]) == {"isoflop", "parametric"} and fits["verdict"] == result["verdict"]
    for png in ("isoflop.png", "curves.png"):
        assert (stage / png).read_bytes()[:4] == b"\x89PNG"
    assert (stage / "laws.md").read_text().count("# Recommendation for C = 1e+11 FLOPs") == 1
