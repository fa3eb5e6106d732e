"""The ``lmpipe`` command: run flows, the demo, the local server, deployments, inspection.

lmpipe run data --config configs/data-demo.yaml --set max_workers=2
lmpipe demo
lmpipe ls                                   # every stage under ./outputs, its latest output
lmpipe inspect outputs/extract              # a stage folder: its fingerprints, status, config diffs
lmpipe inspect minhash@latest               # one output: counts, lineage, sample rows
lmpipe compare pretrain@latest outputs/pretrain/<fingerprint>
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows.registry import FLOWS, config_model, load_flow
from lm import config as lm_config
from lm.catalog import describe_root, describe_stage_folder, is_latest_ref, is_stage_dir, resolve_latest
from lm.compare import compare, comparison_text

__all__ = ["FLOWS", "build_config", "config_model", "load_flow", "main"]

# What the Makefile and the tests set: no usage reports from an offline machine (the
# temporary server otherwise logs "Failed to send telemetry" on every run).
QUIET_ENV = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
READ_ONLY = {"ls", "inspect", "compare"}  # commands that only read outputs: errors are one line


class ConfigError(SystemExit):
    """A bad config: one short message per problem, exit status 2, no traceback."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def build_config(model: type, config_file: str | None, overrides: list[str]) -> Any:
    """The flow's config from YAML + ``--set`` overrides (see lm.config). A missing file or a
    malformed ``--set`` raises ConfigError; a bad value raises pydantic's ValidationError
    (``lmpipe run`` prints both as one short line per problem)."""
    try:
        return lm_config.build_config(model, config_file, overrides)
    except ValidationError:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{config_file or 'config'}: {e}") from e


def cmd_run(args: argparse.Namespace) -> int:
    flow = load_flow(args.flow)
    where = args.config or f"{args.flow} config"
    try:
        cfg = build_config(config_model(flow), args.config, args.set or [])
        cfg.check_inputs()  # missing inputs fail here, before a Prefect server starts
    except ValidationError as e:
        raise ConfigError(lm_config.format_validation_error(e, where=where)) from e
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    from flows.local_run import run_flow

    result = run_flow(lambda: flow(config=cfg))  # a temporary server that goes last; clean Ctrl-C/SIGTERM
    if result is not None:
        print(result)
    return 0


def resolve_output(ref: str, root: str) -> str:
    """A stage output named on the command line: a path, or ``stage@latest`` / ``…/latest``."""
    if is_latest_ref(ref):
        return resolve_latest(ref, root)
    if not Path(ref).exists():
        raise FileNotFoundError(
            f"{ref!r} does not exist (give a stage output directory, its _manifest.json, a stage "
            f"folder, or stage@latest under --root {root})"
        )
    return ref


def cmd_inspect(args: argparse.Namespace) -> int:
    from lm.data.shards import describe  # reads Parquet (pyarrow): imported when used

    target = resolve_output(args.stage_dir, args.root)
    if is_stage_dir(target):
        print(describe_stage_folder(target))
    else:
        print(describe(target, num_samples=args.samples))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    if args.stage:
        folder = Path(args.stage) if os.sep in args.stage else Path(args.root) / args.stage
        print(describe_stage_folder(folder))
    else:
        print(describe_root(args.root))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = (resolve_output(r, args.root) for r in (args.a, args.b))
    print(comparison_text(compare(a, b)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo  # imported when used: Prefect takes seconds to import
    from flows.local_run import run_flow

    return run_flow(lambda: run_demo(args))


def cmd_server(args: argparse.Namespace) -> int:
    from flows.server import LocalPrefect, serve_forever

    return serve_forever(
        LocalPrefect(
            host=args.host,
            port=args.port,
            database_url=args.database_url,
            allowed_roots=args.allow_root or LocalPrefect.allowed_roots,
            files_port=args.files_port,
        )
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.server import api_url, deploy
    from flows.server_auth import read_state

    api = args.api_url or os.environ.get("PREFECT_API_URL") or read_state().get("api") or api_url("127.0.0.1", 4200)
    print(deploy(api, args.name or []))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from lm.model.generate import generate_from_checkpoint

    print(
        generate_from_checkpoint(
            args.checkpoint,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lmpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run one flow with a config")
    p.add_argument("flow", help=f"one of: {', '.join(sorted(FLOWS))}")
    p.add_argument("--config", help="YAML file with the flow's config (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field (repeatable; dotted keys for nested fields)",
    )
    p.set_defaults(func=cmd_run)

    root_help = "artifact root that stage names and stage@latest refer to (default: outputs)"
    p = sub.add_parser("ls", help="list the stages under the root, or one stage's outputs")
    p.add_argument("stage", nargs="?", help="a stage name (e.g. extract) or stage folder; default: every stage")
    p.add_argument("--root", default="outputs", help=root_help)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("inspect", help="a stage output's summary and sample rows, or a stage folder's outputs")
    p.add_argument(
        "stage_dir", help="outputs/<stage>/<fingerprint> (or its _manifest.json), outputs/<stage>, or stage@latest"
    )
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--root", default="outputs", help=root_help)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compare", help="two outputs of one stage side by side: config diff, counts, loss curves")
    p.add_argument("a", help="a stage output (directory, manifest, stage@latest) or a pipeline run's lineage.json")
    p.add_argument("b", help="the other one")
    p.add_argument("--root", default="outputs", help=root_help)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="run the demo pipeline on sample Common Crawl data")
    p.add_argument("--root", default="outputs", help="artifact root (default: ./outputs)")
    p.add_argument("--source", action="append", help="WARC/WET path, glob or URL instead of the bundled sample")
    p.add_argument("--stop-after", choices=["data", "tokenize", "pretrain"], help="stop the demo after this stage")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("server", help="start a local Prefect server (UI) and one worker per work pool")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; for a team, a TLS reverse proxy in front: docs/ui.md)",
    )
    p.add_argument("--port", type=int, default=4200)
    p.add_argument(
        "--files-port", type=int, help="read-only artifact file server (default: --port + 1; 0 = any free port)"
    )
    p.add_argument(
        "--allow-root",
        action="append",
        metavar="DIR",
        help=(
            "artifact root that runs may write and the file server "
            "shows (repeatable; default: ./outputs of this checkout)"
        ),
    )
    p.add_argument(
        "--database-url",
        help="SQLAlchemy URL, e.g. postgresql+asyncpg://user:pw@host/db (default: SQLite under PREFECT_HOME)",
    )
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("deploy", help="register the deployments in deployments/prefect.yaml with the server")
    p.add_argument("--api-url", help="Prefect API (default: $PREFECT_API_URL, else http://127.0.0.1:4200/api)")
    p.add_argument(
        "--name",
        action="append",
        help="only this deployment, e.g. data (repeatable; default: every one whose flow is in this checkout)",
    )
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("generate", help="sample text from a checkpoint (or a pretrain stage directory)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or outputs/pretrain/<fingerprint>")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)
    return top


def main(argv: list[str] | None = None) -> int:
    for k, v in QUIET_ENV.items():  # before Prefect is imported (it reads its settings then)
        os.environ.setdefault(k, v)
    top = parser()
    args = top.parse_args(argv)
    if not getattr(args, "func", None):
        top.print_help()
        return 0
    from flows.server_auth import use_saved_auth

    use_saved_auth()  # PREFECT_API_URL names the `lmpipe server` of this PREFECT_HOME: send its auth string
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"lmpipe: {e.message}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        if args.command not in READ_ONLY:
            raise
        print(f"lmpipe {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lmpipe ls | head`
        if args.command not in READ_ONLY:
            raise
        sys.stdout = open(os.devnull, "w")  # the interpreter flushes stdout at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
