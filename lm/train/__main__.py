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
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from lm.train.trainer import TrainConfig, main_exit_code, train


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {path!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path!r} must hold a mapping of field: value")
        if "train" in data and "model" not in data:  # a pretrain-flow config: its train section is a TrainConfig
            data = data["train"]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = data
        *parents, last = key.strip().split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(raw)
    return TrainConfig.model_validate(data)


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
    sys.exit(main())
