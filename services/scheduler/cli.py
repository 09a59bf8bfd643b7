"""`cairn scheduler serve` (the gRPC service) and `cairn batch` (offline inference over a JSONL file)."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from cairn.common.server import add_serve_command
    from cairn.services.scheduler.service_config import SchedulerServiceConfig

    parser = subparsers.add_parser(
        "scheduler", help="continuous batching over a pool of Ray worker replicas for one model"
    )
    commands = parser.add_subparsers(dest="scheduler_command", metavar="COMMAND", required=True)

    def build(config: SchedulerServiceConfig) -> Any:
        from cairn.services.scheduler.server import scheduler_services

        return scheduler_services(config)

    add_serve_command(commands, SchedulerServiceConfig, build)
    _register_batch(subparsers)


def _register_batch(subparsers: argparse._SubParsersAction) -> None:
    from cairn.services.scheduler.service_config import EngineOptions

    parser = subparsers.add_parser(
        "batch",
        help="offline inference: a JSONL file of prompts in, a JSONL file of completions out",
        description="Runs every line of --input through the engine in this process and writes one "
        "result per line to --output, in input order. A malformed line is reported on stderr with "
        "its line number and as an error record; the other lines still run. Exit status: 0 when "
        "any line succeeded (or the input had none), 1 when every line failed, 2 on bad arguments.",
    )
    parser.add_argument("--model", required=True, help="registry reference (name@alias) or model directory")
    parser.add_argument("--input", required=True, type=Path, help="JSONL prompts (see `cairn batch --help`)")
    parser.add_argument("--output", required=True, type=Path, help="JSONL results, one per input line")
    defaults = parser.add_argument_group("sampling defaults (a line's own fields override them)")
    defaults.add_argument("--max-tokens", type=int, default=256)
    defaults.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    defaults.add_argument("--top-p", type=float, default=1.0)
    defaults.add_argument("--top-k", type=int, default=0)
    defaults.add_argument("--seed", type=int, default=None)
    defaults.add_argument("--ignore-eos", action="store_true", help="generate max_tokens whatever comes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    engine = parser.add_argument_group("engine options")
    for name, field in EngineOptions.model_fields.items():
        # The engine's fallback seed would shadow --seed, which seeds every line instead.
        if name != "seed":
            _add_option(engine, name, field.annotation, field.description or "")
    parser.set_defaults(func=_batch)


def _add_option(group: argparse._ArgumentGroup, name: str, annotation: Any, help_text: str) -> None:
    flag = "--" + name.replace("_", "-")
    options: dict[str, Any] = {"dest": f"engine:{name}", "default": argparse.SUPPRESS, "help": help_text}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
    elif typing.get_origin(annotation) is typing.Literal:
        group.add_argument(flag, choices=typing.get_args(annotation), **options)
    else:
        group.add_argument(flag, type=annotation, **options)


def _batch(args: argparse.Namespace) -> int:
    import sys

    from pydantic import ValidationError

    from cairn.common.errors import CairnError
    from cairn.services.scheduler.batch import run_batch
    from cairn.services.scheduler.offline import LLM

    if not args.input.is_file():
        print(f"cairn batch: input file {args.input} does not exist", file=sys.stderr)
        return 2
    options = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("engine:")}
    defaults = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "ignore_eos": args.ignore_eos,
    }
    try:
        llm = LLM(args.model, **options)
    except (CairnError, ValidationError) as err:
        print(f"cairn batch: cannot start the engine: {err}", file=sys.stderr)
        return 2
    with llm:
        summary = run_batch(llm, args.input, args.output, defaults, progress=not args.no_progress)
    print(
        f"cairn batch: {summary.succeeded} succeeded, {summary.failed} failed; results in {args.output}",
        file=sys.stderr,
    )
    return summary.exit_code
