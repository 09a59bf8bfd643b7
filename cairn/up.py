"""`cairn up`: every service on this machine with embedded defaults.

That is the model registry (SQLite + a local blob directory under
$CAIRN_HOME) holding the locally built tiny model, which is built and pushed
on first start; the tokenizer service; a scheduler serving that model from
the registry on a local Ray instance with one CPU worker; and the router with
the public gRPC API and the OpenAI-compatible HTTP API. Each service runs on
the common runtime exactly as it would alone; this module only wires them
together and prints how to reach them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "tiny-llama"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="start every service on this machine with embedded defaults")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="state directory for the registry and caches (default: $CAIRN_HOME or ~/.cairn)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every service binds")
    parser.add_argument(
        "--registry-port", type=int, default=50055, help="registry gRPC port (0: any free port)"
    )
    parser.add_argument(
        "--scheduler-port", type=int, default=50053, help="scheduler gRPC port (0: any free port)"
    )
    parser.add_argument(
        "--tokenizer-port", type=int, default=50052, help="tokenizer gRPC port (0: any free port)"
    )
    parser.add_argument("--router-port", type=int, default=50051, help="router gRPC port (0: any free port)")
    parser.add_argument(
        "--http-port", type=int, default=8000, help="OpenAI-compatible HTTP port (0: any free port)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="name of the embedded default model")
    parser.add_argument(
        "--max-loras",
        type=int,
        default=4,
        help="LoRA adapters the worker holds at once (0: the base model only); any registry adapter of "
        "the model is servable by its registry name",
    )
    parser.add_argument("--max-lora-rank", type=int, default=16, help="largest LoRA rank accepted")
    parser.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=REF",
        help="adapters served under a name of their own: a registry reference or a PEFT directory each",
    )
    parser.set_defaults(func=_up)


def _home(arg: Path | None) -> Path:
    home = arg or Path(os.environ.get("CAIRN_HOME") or Path.home() / ".cairn")
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["CAIRN_HOME"] = str(home)
    return home


def ensure_default_model(target: str, name: str, home: Path) -> str:
    """Builds and pushes the tiny model unless the registry already has `name`; returns its reference."""
    from cairn.common.errors import NotFound
    from cairn.services.registry.client import RegistryClient
    from cairn.tiny.build import build_tiny_model

    with RegistryClient(target) as client:
        try:
            version = client.resolve(name)
            return f"{version.model}@{version.number}"
        except NotFound:
            pass
        out = home / "models" / name
        if not (out / "config.json").is_file():
            print(f"building the tiny model into {out} ...", flush=True)
            build_tiny_model(out)
        version = client.push_dir(
            out, name, recipe={"source": "cairn models build-tiny", "defaults": True}, aliases=["production"]
        )
        return f"{version.model}@{version.number}"


async def _serve(args: argparse.Namespace) -> int:
    from cairn.common.logging import configure_logging
    from cairn.common.server import start_server
    from cairn.services.registry.config import RegistryConfig
    from cairn.services.registry.server import registry_services

    home = _home(args.home)
    configure_logging("cairn", "WARNING", "text")
    registry_config = RegistryConfig(
        host=args.host, port=args.registry_port, metrics_port=0, root=home / "registry"
    )
    async with registry_services(registry_config) as services:
        registry = await start_server(registry_config, services)
        target = f"{args.host}:{registry.port}"
        os.environ["CAIRN_REGISTRY"] = target
        try:
            await asyncio.to_thread(ensure_default_model, target, args.model, home)
            await _serve_stack(args, home, target)
        finally:
            await registry.stop(grace=5.0)
    return 0


async def _start(stack: AsyncExitStack, config: Any, build: Callable[[Any], Any]) -> Any:
    """One service on the common runtime; `stack` stops it (and closes what it built) on exit."""
    from cairn.common.server import start_server

    services = await stack.enter_async_context(build(config))
    server = await start_server(config, services)
    stack.push_async_callback(server.stop, 5.0)
    return server


async def _serve_stack(args: argparse.Namespace, home: Path, registry: str) -> None:
    """Tokenizer, scheduler (local Ray, one CPU worker) and router for the default model, until a signal."""
    from cairn.common.server import start_server
    from cairn.services.router.config import RouterConfig
    from cairn.services.router.server import RouterRuntime
    from cairn.services.scheduler.server import scheduler_services
    from cairn.services.scheduler.service_config import SchedulerServiceConfig
    from cairn.services.tokenizer.config import TokenizerConfig
    from cairn.services.tokenizer.server import tokenizer_services

    ref = f"{args.model}@production"
    async with AsyncExitStack() as stack:
        tokenizer_config = TokenizerConfig(
            host=args.host, port=args.tokenizer_port, metrics_port=0, registry_address=registry, preload=[ref]
        )
        tokenizer = await _start(stack, tokenizer_config, tokenizer_services)
        config = SchedulerServiceConfig(
            host=args.host,
            port=args.scheduler_port,
            metrics_port=0,
            model=ref,
            deployment=args.model,
            num_workers=1,
            device="cpu",
            # The tiny model needs little KV cache; the 1 GiB default would only cost start-up time.
            cpu_kv_cache_gb=0.0625,
            max_loras=args.max_loras,
            max_lora_rank=args.max_lora_rank,
            lora_modules=args.lora_modules,
        )
        scheduler = await _start(stack, config, scheduler_services)
        router_config = RouterConfig(
            host=args.host,
            port=args.router_port,
            metrics_port=0,
            http_port=args.http_port,
            tokenizer_address=f"{args.host}:{tokenizer.port}",
            deployments={args.model: [f"{args.host}:{scheduler.port}"]},
            # The tokenizer loads the model from the registry, as it would in a cluster.
            tokenizers={args.model: ref},
        )
        runtime = RouterRuntime(router_config)
        stack.push_async_callback(runtime.close)
        await runtime.start()
        router = await start_server(router_config, runtime.grpc_services())
        stack.push_async_callback(router.stop, 5.0)
        addresses = {
            "registry": registry,
            "tokenizer": f"{args.host}:{tokenizer.port}",
            "scheduler": f"{args.host}:{scheduler.port}",
            "router": f"{args.host}:{router.port}",
            "http": f"http://{args.host}:{runtime.http_port}",
        }
        print(_banner(home, addresses, ref, args.model, args.max_loras), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("cairn up: shutting down", flush=True)


def _banner(home: Path, at: dict[str, str], ref: str, model: str, max_loras: int) -> str:
    http, router = at["http"], at["router"]
    completion = f'{{"model": "{model}", "prompt": "Once upon a time", "max_tokens": 32}}'
    chat = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "stream": true}}'
    openai = (
        f'from openai import OpenAI; c = OpenAI(base_url="{http}/v1", api_key="none"); '
        f'print(c.chat.completions.create(model="{model}", '
        f'messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)'
    )
    grpc_request = f'{{"model": "{model}", "text": "Once upon a time"}}'
    return "\n".join(
        [
            "cairn is up",
            f"  state directory  {home}",
            f"  registry         {at['registry']}   (model {ref})",
            f"  tokenizer        {at['tokenizer']}",
            f"  scheduler        {at['scheduler']}   (serves {ref} on 1 CPU worker, local Ray)",
            f"  router           {router}   (gRPC cairn.v1.Inference, model {model})",
            f"  openai api       {http}/v1   (schema {http}/openapi.json, docs {http}/docs)",
            f"  lora adapters    any peft-adapter of {ref} in the registry, by name ({max_loras} at once)"
            if max_loras
            else "  lora adapters    off (--max-loras 0)",
            "",
            "try:",
            f"  curl {http}/v1/completions -H 'Content-Type: application/json' -d '{completion}'",
            f"  curl -N {http}/v1/chat/completions -H 'Content-Type: application/json' -d '{chat}'",
            f"  python -c '{openai}'",
            f"  grpcurl -plaintext -d '{grpc_request}' {router} cairn.v1.Inference/GenerateStream",
            f"  cairn chat --router {router}",
            f"  cairn registry ls --registry {at['registry']}",
            f"  grpcurl -plaintext {at['scheduler']} cairn.v1.Scheduler/ListWorkers",
            "",
            "Ctrl-C stops every service.",
        ]
    )


def _up(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_serve(args))
    except OSError as exc:
        print(f"cairn up: {exc}", file=sys.stderr)
        return 1
