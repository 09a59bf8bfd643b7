"""`cairn models build-tiny`: write the tiny model directory, and optionally push it to the registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cairn.common.errors import CairnError
from cairn.tiny.build import ARCHITECTURES, DTYPES, build_tiny_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = _models_group(subparsers).add_parser(
        "build-tiny",
        help="build the small local model (random weights, locally trained tokenizer)",
        description="Write a Hugging Face model directory with seeded random weights and a byte-level BPE "
        "tokenizer trained here. The same arguments always give byte-identical files.",
    )
    parser.add_argument("--out", type=Path, required=True, help="model directory to create (absent or empty)")
    parser.add_argument(
        "--arch", choices=ARCHITECTURES, default="llama", help="model family (default: llama)"
    )
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=128)
    parser.add_argument("--max-position-embeddings", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 200KB or 5GB (default: 5GB)"
    )
    push = parser.add_argument_group("registry")
    push.add_argument(
        "--push", action="store_true", help="push the built directory as a new registry version"
    )
    push.add_argument("--name", help="registry model name (default: tiny-ARCH)")
    push.add_argument(
        "--alias", action="append", default=[], help="alias for the pushed version (repeatable)"
    )
    push.add_argument(
        "--registry", metavar="ADDR", help="registry address (default: $CAIRN_REGISTRY or 127.0.0.1:50055)"
    )
    parser.set_defaults(func=_build_tiny)


def _models_group(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The `cairn models` sub-command group, shared with other packages that add model commands."""
    models = subparsers.choices.get("models")
    if models is None:
        models = subparsers.add_parser("models", help="build and manage models")
        return models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    return next(a for a in models._actions if isinstance(a, argparse._SubParsersAction))


def _build_tiny(args: argparse.Namespace) -> int:
    build_args = {
        "architecture": args.arch,
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "num_heads": args.num_heads,
        "num_kv_heads": args.num_kv_heads,
        "intermediate_size": args.intermediate_size,
        "max_position_embeddings": args.max_position_embeddings,
        "seed": args.seed,
        "dtype": args.dtype,
        "max_shard_size": args.max_shard_size,
    }
    try:
        path = build_tiny_model(args.out, **build_args)
    except CairnError as exc:
        print(f"cairn models build-tiny: {exc.message}", file=sys.stderr)
        return 1
    print(path)
    if not args.push:
        return 0
    from cairn.services.registry.client import RegistryClient

    name = args.name or f"tiny-{args.arch}"
    try:
        with RegistryClient(args.registry) as client:
            version = client.push_dir(
                path,
                name,
                # The build arguments reproduce the files exactly, so they are the whole recipe.
                recipe={"builder": "cairn.tiny", **build_args},
                aliases=args.alias,
                description=f"random-weight {args.arch} model built by `cairn models build-tiny`",
            )
    except CairnError as exc:
        print(f"cairn models build-tiny: built {path} but could not push it: {exc.message}", file=sys.stderr)
        return 1
    print(version.ref)
    return 0
