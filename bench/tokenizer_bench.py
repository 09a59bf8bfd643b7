"""Tokenizer service throughput on CPU: DetokenizeBatch (one call per scheduler step) and Encode.

    python bench/tokenizer_bench.py [--model DIR] [--out bench/results/tokenizer.json]

Without --model the tiny model is built into a temporary directory. The
DetokenizeBatch cases advance N streams by one token per call, as the router
does once per scheduler step, and report stream-steps per second (= output
tokens per second one tokenizer thread sustains); "core" is the Python core
alone, "grpc" the async client through a loopback server, conversions and
serialization included. Both run in one process, as the server does after
a model is loaded (its long-lived objects frozen out of the cyclic GC).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from cairn.common.server import start_server
from cairn.services.tokenizer.client import TokenizerClient
from cairn.services.tokenizer.config import TokenizerConfig
from cairn.services.tokenizer.records import DetokenizeState, StreamStep
from cairn.services.tokenizer.server import freeze_long_lived_objects, open_core, tokenizer_services

BATCH_SIZES = (1, 64, 256, 1024)
STEPS = 200
PROMPT = "You are a helpful assistant. Summarize the following text in three sentences. " * 8


def _steps(model: str, states: list[DetokenizeState], rng: random.Random, vocab: int) -> list[StreamStep]:
    return [StreamStep(model, [rng.randrange(6, vocab)], s, stream_id=str(i)) for i, s in enumerate(states)]


def bench_core(model: str) -> list[dict[str, Any]]:
    core = open_core(TokenizerConfig(registry_address=""))
    vocab = core.info(model).vocab_size
    freeze_long_lived_objects()
    seed = core.encode(model, [PROMPT])[0].token_ids
    rows = []
    for n in BATCH_SIZES:
        rng = random.Random(0)
        states = [DetokenizeState.seeded(seed)] * n
        start = time.perf_counter()
        for _ in range(STEPS):
            states = [r.state for r in core.detokenize_batch(_steps(model, states, rng, vocab))]
        elapsed = time.perf_counter() - start
        rows.append(_row("core", "DetokenizeBatch", n, elapsed))
    start = time.perf_counter()
    for _ in range(STEPS):
        core.encode(model, [PROMPT])
    rows.append(_row("core", "Encode", 1, time.perf_counter() - start))
    return rows


async def bench_grpc(model: str) -> list[dict[str, Any]]:
    config = TokenizerConfig(
        port=0, metrics_port=0, registry_address="", log_level="WARNING", preload=[model]
    )
    rows = []
    async with tokenizer_services(config) as services:
        running = await start_server(config, services)
        try:
            async with TokenizerClient(f"127.0.0.1:{running.port}") as client:
                vocab = (await client.info(model)).vocab_size
                seed = (await client.encode(model, [PROMPT]))[0].token_ids
                for n in BATCH_SIZES:
                    rng = random.Random(0)
                    states = [DetokenizeState.seeded(seed)] * n
                    start = time.perf_counter()
                    for _ in range(STEPS):
                        results = await client.detokenize_batch(_steps(model, states, rng, vocab))
                        states = [r.state for r in results]
                    rows.append(_row("grpc", "DetokenizeBatch", n, time.perf_counter() - start))
                start = time.perf_counter()
                for _ in range(STEPS):
                    await client.encode(model, [PROMPT])
                rows.append(_row("grpc", "Encode", 1, time.perf_counter() - start))
        finally:
            await running.stop(None)
    return rows


def _row(path: str, rpc: str, streams: int, elapsed: float) -> dict[str, Any]:
    return {
        "path": path,
        "rpc": rpc,
        "streams": streams,
        "ms_per_call": round(elapsed / STEPS * 1e3, 3),
        "stream_steps_per_s": round(streams * STEPS / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="HF model directory (default: build the tiny model)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tokenizer.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from cairn.tiny.build import build_tiny_model

            args.model = build_tiny_model(Path(tmp) / "tiny")
        model = str(args.model.resolve())
        rows = bench_core(model) + asyncio.run(bench_grpc(model))
    for row in rows:
        print(
            f"{row['path']:5} {row['rpc']:16} streams={row['streams']:4} {row['ms_per_call']:8.3f} ms/call "
            f"{row['stream_steps_per_s']:>9} stream-steps/s"
        )
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "steps": STEPS,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
