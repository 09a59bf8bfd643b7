"""`cairn up`: every service on this machine with embedded defaults.

Today that is the model registry (SQLite + a local blob directory under
$CAIRN_HOME) holding the locally built tiny model, which is built and pushed
on first start, and a scheduler serving that model from the registry on a
local Ray instance with one CPU worker. Each service runs on the common
runtime exactly as it would alone; this module only wires them together and
prints how to reach them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

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
    parser.add_argument("--model", default=DEFAULT_MODEL, help="name of the embedded default model")
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
            await _serve_scheduler(args, home, target)
        finally:
            await registry.stop(grace=5.0)
    return 0


async def _serve_scheduler(args: argparse.Namespace, home: Path, registry: str) -> None:
    """The scheduler for the default model (local Ray, one CPU worker), until a signal."""
    from cairn.common.server import start_server
    from cairn.services.scheduler.server import scheduler_services
    from cairn.services.scheduler.service_config import SchedulerServiceConfig

    config = SchedulerServiceConfig(
        host=args.host,
        port=args.scheduler_port,
        metrics_port=0,
        model=f"{args.model}@production",
        deployment=args.model,
        num_workers=1,
        device="cpu",
        # The tiny model needs little KV cache; the 1 GiB default would only cost start-up time.
        cpu_kv_cache_gb=0.0625,
    )
    async with scheduler_services(config) as services:
        scheduler = await start_server(config, services)
        try:
            print(_banner(home, registry, f"{args.host}:{scheduler.port}", config.model), flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            print("cairn up: shutting down", flush=True)
        finally:
            await scheduler.stop(grace=5.0)


def _banner(home: Path, registry: str, scheduler: str, ref: str) -> str:
    return "\n".join(
        [
            "cairn is up",
            f"  state directory  {home}",
            f"  registry         {registry}   (model {ref})",
            f"  scheduler        {scheduler}   (serves {ref} on 1 CPU worker, local Ray)",
            "",
            "try:",
            f"  cairn registry ls --registry {registry}",
            f"  cairn registry show {ref} --registry {registry}",
            f"  grpcurl -plaintext {scheduler} cairn.v1.Scheduler/ListWorkers",
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
