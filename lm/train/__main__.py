"""``python -m lm.train --config FILE [--set key=value ...]``: one training run (see lm.train.trainer).

    python -m lm.train --config configs/pretrain-demo.yaml --set data=outputs/tokenize/<fp> --set out_dir=runs/demo
    torchrun --standalone --nproc-per-node 2 -m lm.train --config run.yaml --set strategy=ddp

The config file is YAML holding a TrainConfig (``model:`` nested), or a pretrain config whose
``train:`` section is one; ``--set`` values are parsed as YAML and dotted keys reach nested
fields (``--set model.d_model=128``). ``model.vocab_size: auto`` takes the vocabulary size from
the token manifest of ``data``. Resuming with settings that change the computation is refused
unless ``--allow-changed``. The summary is printed as one JSON line at the end.
Exit status: 0 done, 3 diverged (non-finite loss), 2 bad config (or a refused resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pydantic import ValidationError

from lm.config import apply_overrides, load_yaml
from lm.train.config import TrainConfig, resolve_vocab_size
from lm.train.distributed import exit_without_teardown
from lm.train.resume import ChangedSettingsError
from lm.train.trainer import main_exit_code, train


def load_config(path: str | None, overrides: list[str], allow_changed: bool = False) -> TrainConfig:
    data = load_yaml(path) if path else {}
    if "train" in data and "model" not in data:  # a pretrain-flow config: its train section is a TrainConfig
        data = data["train"]
    cfg = TrainConfig.model_validate(apply_overrides(data, overrides, TrainConfig))
    if allow_changed:
        cfg = cfg.model_copy(update={"allow_changed": True})
    return resolve_vocab_size(cfg) if cfg.data else cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lm.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file holding a TrainConfig (or a pretrain config with a train: section)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    parser.add_argument(
        "--allow-changed",
        action="store_true",
        help="resume even if settings that change the computation differ from the checkpoint's (recorded in meta.json)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set, args.allow_changed)
    except (ValidationError, ValueError, FileNotFoundError) as e:
        print(f"bad training config: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except ChangedSettingsError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return main_exit_code(summary)


if __name__ == "__main__":
    code = main()
    if "LOCAL_RANK" in os.environ:  # a torchrun rank: see exit_without_teardown
        exit_without_teardown(code)
    sys.exit(code)
