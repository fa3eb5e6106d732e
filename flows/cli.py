"""The ``lmpipe`` command: run flows, the demo, the local server, deployments, inspection.

    lmpipe run data --config configs/data-demo.yaml --set max_workers=2
    lmpipe demo
    lmpipe inspect outputs/extract/<fingerprint>
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from pydantic import ValidationError

from lm import config as lm_config

# Every flow lmpipe can run: name -> "module:function". A flow takes one argument,
# ``config``, a pydantic model (the same model is the Prefect UI form).
FLOWS: dict[str, str] = {
    "data": "flows.data:data_flow",
    "filters": "flows.funnel:filters_flow",
    "train-quality-classifier": "flows.classifiers:train_classifier_flow",
    "tokenizer": "flows.tokenizer:tokenizer_flow",
    "tokenize": "flows.tokenize:tokenize_flow",
    "pretrain": "flows.pretrain:pretrain_flow",
    "scaling": "flows.scaling:scaling_flow",
    "sft": "flows.sft:sft_flow",
    "dpo": "flows.dpo:dpo_flow",
    "grpo": "flows.grpo:grpo_flow",
    "evaluate": "flows.evaluate:evaluate_flow",
    "align-demo": "flows.align_demo:align_demo_flow",
    "pipeline": "flows.pipeline:pipeline_flow",
}


def load_flow(name: str):
    if name not in FLOWS:
        raise SystemExit(f"unknown flow {name!r}; choose one of: {', '.join(sorted(FLOWS))}")
    module, func = FLOWS[name].split(":")
    return getattr(importlib.import_module(module), func)


def config_model(flow) -> type:
    """The pydantic model of a flow's ``config`` parameter."""
    import typing

    fn = getattr(flow, "fn", flow)
    # string annotations (from __future__ import annotations) resolved without eval()
    return typing.get_type_hints(fn)["config"]


def build_config(model: type, config_file: str | None, overrides: list[str]) -> Any:
    """The flow's config from YAML + ``--set`` overrides (see lm.config); bad input exits with its reason."""
    try:
        return lm_config.build_config(model, config_file, overrides)
    except (FileNotFoundError, ValueError) as e:
        if isinstance(e, ValidationError):
            raise
        raise SystemExit(str(e)) from e


def cmd_run(args: argparse.Namespace) -> int:
    flow = load_flow(args.flow)
    cfg = build_config(config_model(flow), args.config, args.set or [])
    from flows.local_run import run_flow

    result = run_flow(lambda: flow(config=cfg))  # a temporary server that goes last; clean Ctrl-C/SIGTERM
    if result is not None:
        print(result)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lm.data.shards import describe

    print(describe(args.stage_dir, num_samples=args.samples))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from flows.local_run import run_flow

    return run_flow(lambda: run_demo(args))


def cmd_server(args: argparse.Namespace) -> int:
    from flows.server import LocalPrefect, serve_forever

    return serve_forever(LocalPrefect(host=args.host, port=args.port, database_url=args.database_url,
                                      allowed_roots=args.allow_root or LocalPrefect.allowed_roots, files_port=args.files_port))


def cmd_deploy(args: argparse.Namespace) -> int:
    import os

    from flows.server import api_url, deploy
    from flows.server_auth import read_state

    api = args.api_url or os.environ.get("PREFECT_API_URL") or read_state().get("api") or api_url("127.0.0.1", 4200)
    print(deploy(api, args.name or []))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from lm.model.generate import generate_from_checkpoint

    print(generate_from_checkpoint(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_p=args.top_p, seed=args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one flow with a config")
    p.add_argument("flow", help=f"one of: {', '.join(sorted(FLOWS))}")
    p.add_argument("--config", help="YAML file with the flow's config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable; dotted keys for nested fields)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="print a stage's manifest summary and sample rows")
    p.add_argument("stage_dir")
    p.add_argument("--samples", type=int, default=3)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="run the demo pipeline on sample Common Crawl data")
    p.add_argument("--root", default="outputs", help="artifact root (default: ./outputs)")
    p.add_argument("--source", action="append", help="WARC/WET path, glob or URL instead of the bundled sample")
    p.add_argument("--stop-after", choices=["data", "tokenize", "pretrain"], help="stop the demo after this stage")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("server", help="start a local Prefect server (UI) and one worker per work pool")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; for a team, a TLS reverse proxy in front: docs/ui.md)")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--files-port", type=int, help="read-only artifact file server (default: --port + 1; 0 = any free port)")
    p.add_argument("--allow-root", action="append", metavar="DIR",
                   help="artifact root that runs may write and the file server shows (repeatable; default: ./outputs of this checkout)")
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+asyncpg://user:pw@host/db (default: SQLite under PREFECT_HOME)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("deploy", help="register the deployments in deployments/prefect.yaml with the server")
    p.add_argument("--api-url", help="Prefect API (default: $PREFECT_API_URL, else http://127.0.0.1:4200/api)")
    p.add_argument("--name", action="append", help="only this deployment, e.g. data (repeatable; default: every one whose flow is in this checkout)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("generate", help="sample text from a checkpoint (or a pretrain stage directory)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or outputs/pretrain/<fingerprint>")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    args = parser.parse_args(argv)
    from flows.server_auth import use_saved_auth

    use_saved_auth()  # PREFECT_API_URL names the `lmpipe server` of this PREFECT_HOME: send its auth string
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
