"""``python -m lm.train --config FILE [--set key=value ...]``: one training run (see lm.train.trainer).

    python -m lm.train --config configs/train-demo.yaml --set out_dir=runs/demo --set max_steps=300
    torchrun --nproc_per_node=8 -m lm.train --config ... --set strategy=ddp   # once a strategy exists

The config file is YAML holding a TrainConfig (``model:`` nested); ``--set`` values are parsed as
YAML and dotted keys reach nested fields (``--set model.d_model=128``). The summary is printed
as one JSON line at the end. Exit status: 0 done, 3 diverged (non-finite loss), 2 bad config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pydantic import ValidationError

from lm.config import apply_overrides, load_yaml
from lm.train.trainer import TrainConfig, main_exit_code, train


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    data = load_yaml(path) if path else {}
    if "train" in data and "model" not in data:  # a pretrain-flow config: its train section is a TrainConfig
        data = data["train"]
    return TrainConfig.model_validate(apply_overrides(data, overrides, TrainConfig))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lm.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file holding a TrainConfig")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (ValidationError, ValueError, FileNotFoundError) as e:
        print(f"bad training config: {e}", file=sys.stderr)
        return 2
    summary = train(cfg)
    print(json.dumps(summary), flush=True)
    return main_exit_code(summary)


if __name__ == "__main__":
    code = main()
    if "LOCAL_RANK" in os.environ:  # a torchrun rank: see exit_without_teardown
        from lm.train.distributed import exit_without_teardown

        exit_without_teardown(code)
    sys.exit(code)
