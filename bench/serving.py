"""Serving benchmark: the full stack (router -> tokenizer -> scheduler -> worker) under load, over gRPC
and the OpenAI HTTP API, next to the in-process engine on the same workload in the same run.

    # H200, full stack started here (one process per service), reference workload, 8B shape:
    python bench/serving.py stack --shape 8b --out bench/results/serving_8b_h200.json \\
        --plot bench/results/serving_8b_h200.svg
    # CPU smoke run of the same path:
    python bench/serving.py stack --shape tiny --device cpu --dtype float32 --requests 32 --output-len 32 \\
        --rates 4,inf --concurrency 1,8 --sweep-requests 16 --out /tmp/serving.json --plot /tmp/serving.svg
    # Against a running stack (e.g. `cairn up`), no engine baseline:
    python bench/serving.py client --http http://127.0.0.1:8000 --grpc 127.0.0.1:50051 --model tiny-llama \\
        --requests 64 --output-len 64 --out /tmp/serving.json

`stack` builds a model directory for the shape (config.json, random weights loaded as `dummy`, a
byte-level BPE tokenizer with the shape's full vocabulary so every sampled id detokenizes), runs
the in-process engine (`LLM.generate`, all requests at once) in a child process, then starts the
tokenizer, a scheduler with one Ray worker, and the router as separate processes, and measures:

  (a) the reference workload (512 requests, log-normal prompts of mean ~348 tokens, 256 output
      tokens, EOS ignored) sent all at once over gRPC and over HTTP: output tokens/s, and the
      ratio to the in-process engine (target: >= 0.9);
  (b) a request-rate sweep (Poisson arrivals) on the first --sweep-requests requests, and a
      concurrency sweep (closed loop, 8 requests per client), per API.

Per run: TTFT, time per output token (TPOT), inter-token latency (ITL: the gaps between streamed
chunks) as mean / p50 / p90 / p99, end-to-end latency, request and token throughput. Results go
to one JSON (commit, machine, command, every figure); `--plot` draws them as an SVG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENT = "bench"
REQUESTS_PER_CLIENT = 8


# ---------------------------------------------------------------- one request


@dataclass
class Outcome:
    """One request as the client saw it (times in seconds, from its own start)."""

    ok: bool
    prompt_tokens: int
    output_tokens: int = 0
    ttft: float = math.nan
    latency: float = math.nan
    # Gaps between consecutive streamed chunks after the first.
    itl: list[float] = field(default_factory=list)
    error: str = ""


Send = Callable[[list[int], int], Awaitable[Outcome]]


class Arrivals:
    """Chunk arrival times of one stream."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[float] = []

    def chunk(self) -> None:
        self.times.append(time.perf_counter())

    def outcome(self, prompt_tokens: int, output_tokens: int) -> Outcome:
        end = time.perf_counter()
        if not self.times:
            return Outcome(False, prompt_tokens, error="no output")
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return Outcome(True, prompt_tokens, output_tokens, self.times[0] - self.start, end - self.start, gaps)


def http_sender(
    base_url: str, model: str, max_connections: int
) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import httpx2 as httpx

    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    # Without TCP_NODELAY the request body waits for the server's delayed ACK of the headers (~40 ms
    # on Linux), which would be charged to the server's time to first token.
    transport = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(3600.0), transport=transport)

    async def send(prompt: list[int], output_len: int) -> Outcome:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": output_len,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        arrivals, output_tokens = Arrivals(), 0
        try:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    return Outcome(
                        False, len(prompt), error=f"HTTP {response.status_code}: {await response.aread()}"
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return Outcome(False, len(prompt), error=chunk["error"]["message"])
                    if chunk["choices"]:
                        arrivals.chunk()
                    elif chunk.get("usage"):
                        output_tokens = chunk["usage"]["completion_tokens"]
        except httpx.HTTPError as e:
            return Outcome(False, len(prompt), error=f"{type(e).__name__}: {e}")
        return arrivals.outcome(len(prompt), output_tokens)

    return send, client.aclose


def grpc_sender(target: str, model: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import grpc

    from cairn.common.channel import make_channel
    from cairn.v1 import common_pb2, inference_pb2, inference_pb2_grpc

    channel = make_channel(target)
    stub = inference_pb2_grpc.InferenceStub(channel)

    async def send(prompt: list[int], output_len: int) -> Outcome:
        request = inference_pb2.GenerateRequest(
            model=model,
            token_ids=inference_pb2.TokenIds(ids=prompt),
            options=inference_pb2.GenerationOptions(
                sampling=common_pb2.SamplingParams(temperature=0.0),
                stop=common_pb2.StopCriteria(max_tokens=output_len, ignore_eos=True),
            ),
        )
        arrivals, output_tokens = Arrivals(), 0
        try:
            async for message in stub.GenerateStream(request):
                if message.deltas:
                    arrivals.chunk()
                if message.HasField("usage"):
                    output_tokens = message.usage.completion_tokens
        except grpc.aio.AioRpcError as e:
            return Outcome(False, len(prompt), error=f"{e.code().name}: {e.details()}")
        return arrivals.outcome(len(prompt), output_tokens)

    return send, channel.close


# ---------------------------------------------------------------- load patterns


async def at_rate(
    send: Send, prompts: Sequence[list[int]], output_len: int, rate: float, seed: int
) -> list[Outcome]:
    """Open loop: requests start at Poisson arrivals of `rate` per second (inf: all at once)."""
    rng = random.Random(seed)
    tasks = []
    for prompt in prompts:
        tasks.append(asyncio.ensure_future(send(prompt, output_len)))
        if math.isfinite(rate):
            await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


async def closed_loop(
    send: Send, prompts: Sequence[list[int]], output_len: int, concurrency: int
) -> list[Outcome]:
    """`concurrency` clients, each sending its next request when the last one ends."""
    queue = list(reversed(prompts))
    outcomes: list[Outcome] = []

    async def client() -> None:
        while queue:
            outcomes.append(await send(queue.pop(), output_len))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    values = sorted(v for v in values if math.isfinite(v))
    if not values:
        return None

    def pick(q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    return {"mean": statistics.fmean(values), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def summarize(outcomes: Sequence[Outcome], wall: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    output = sum(o.output_tokens for o in ok)
    prompt = sum(o.prompt_tokens for o in ok)
    return {
        "requests": len(outcomes),
        "completed": len(ok),
        "failed": len(outcomes) - len(ok),
        "errors": sorted({o.error for o in outcomes if not o.ok})[:5],
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tokens": output,
        "output_tokens_per_s": output / wall,
        "total_tokens_per_s": (output + prompt) / wall,
        "ttft_s": percentiles([o.ttft for o in ok]),
        "tpot_s": percentiles(
            [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
        ),
        "itl_s": percentiles([gap for o in ok for gap in o.itl]),
        "latency_s": percentiles([o.latency for o in ok]),
    }


async def measure(
    api: str,
    send: Send,
    prompts: Sequence[list[int]],
    output_len: int,
    *,
    rate: float = math.inf,
    concurrency: int = 0,
) -> dict[str, Any]:
    # Warm-up outside the timed run: connections, the router's first routes, the worker's graphs.
    await at_rate(send, prompts[:4], 4, math.inf, 0)
    start = time.perf_counter()
    if concurrency:
        outcomes = await closed_loop(send, prompts, output_len, concurrency)
    else:
        outcomes = await at_rate(send, prompts, output_len, rate, seed=1)
    result = summarize(outcomes, time.perf_counter() - start)
    result |= {"api": api, "rate": "inf" if math.isinf(rate) else rate, "concurrency": concurrency or None}
    label = f"concurrency {concurrency}" if concurrency else f"rate {result['rate']}"
    ttft = result["ttft_s"]["p50"] * 1e3 if result["ttft_s"] else math.nan
    tpot = result["tpot_s"]["p50"] * 1e3 if result["tpot_s"] else math.nan
    print(
        f"{api:<5} {label:<16} {result['output_tokens_per_s']:10.0f} output tok/s  "
        f"TTFT p50 {ttft:8.1f} ms  TPOT p50 {tpot:6.2f} ms  failed {result['failed']}",
        flush=True,
    )
    return result


async def run_client(
    args: argparse.Namespace, prompts: list[list[int]], targets: dict[str, str]
) -> dict[str, Any]:
    """The reference run and the sweeps for every API in `targets` ({"grpc": addr, "http": url})."""
    senders: dict[str, tuple[Send, Callable[[], Awaitable[None]]]] = {}
    if "grpc" in targets:
        senders["grpc"] = grpc_sender(targets["grpc"], args.model)
    if "http" in targets:
        senders["http"] = http_sender(targets["http"], args.model, max(len(prompts), 64))
    sweep = prompts[: args.sweep_requests]
    results: dict[str, Any] = {"reference": {}, "rate_sweep": [], "concurrency_sweep": []}
    try:
        for api, (send, _) in senders.items():
            results["reference"][api] = await measure(api, send, prompts, args.output_len)
            for rate in args.rates:
                results["rate_sweep"].append(await measure(api, send, sweep, args.output_len, rate=rate))
            for concurrency in args.concurrency:
                # A few requests per client reach a steady state without making concurrency 1 take minutes.
                part = sweep[: max(concurrency * REQUESTS_PER_CLIENT, 16)]
                results["concurrency_sweep"].append(
                    await measure(api, send, part, args.output_len, concurrency=concurrency)
                )
    finally:
        for _, close in senders.values():
            await close()
    return results


# ---------------------------------------------------------------- the stack


def synthetic_tokenizer(out: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer with exactly `vocab_size` tokens (random merges), so every id a
    random-weight model samples has text; its cost per token is that of a real BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet)}
    tokens = list(alphabet)
    merges = []
    rng = random.Random(0)
    while len(vocab) < vocab_size - len(specials):
        left, right = rng.choice(tokens), rng.choice(tokens)
        merged = left + right
        if merged in vocab or len(merged) > 12:
            continue
        vocab[merged] = len(vocab)
        tokens.append(merged)
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials[0],
        "eos_token": specials[1],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def model_dir(shape: str, out: Path) -> Path:
    from engine_decode import SHAPES

    config = SHAPES[shape]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    synthetic_tokenizer(out, config["vocab_size"])
    return out


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """What both the in-process engine and the served scheduler run with."""
    return {
        "device": args.device,
        "dtype": args.dtype,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
        "num_scheduler_steps": args.num_scheduler_steps,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "cpu_kv_cache_gb": args.cpu_kv_cache_gb,
    }


def _engine_baseline(
    model: str, options: dict[str, Any], prompts: list[list[int]], output_len: int, out: str
) -> None:
    from throughput import engine_throughput

    from cairn.services.scheduler.offline import LLM

    with LLM(model, load_format="dummy", **options) as llm:
        Path(out).write_text(json.dumps(engine_throughput(llm, prompts, output_len)))


def engine_baseline(model: Path, args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    """The in-process engine on the same workload, in a child process (its device memory goes with it)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        context = multiprocessing.get_context("spawn")
        child = context.Process(
            target=_engine_baseline,
            args=(str(model), engine_options(args), prompts, args.output_len, out.name),
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the in-process engine run failed (exit code {child.exitcode})")
        return json.loads(Path(out.name).read_text())


def serve_scheduler(args: argparse.Namespace) -> int:
    """`serve-scheduler`: the scheduler service as `cairn scheduler serve` runs it, on dummy weights."""
    from cairn.common.server import run_service
    from cairn.services.scheduler.launcher import RayLauncher, connect_ray
    from cairn.services.scheduler.pool import WorkerPool
    from cairn.services.scheduler.server import grpc_service
    from cairn.services.scheduler.service_config import SchedulerServiceConfig

    config = SchedulerServiceConfig(
        model=str(args.model_dir),
        deployment=DEPLOYMENT,
        port=args.port,
        metrics_port=0,
        log_format="text",
        max_queue=100_000,
        **json.loads(args.options),
    )

    @contextlib.asynccontextmanager
    async def build(config: SchedulerServiceConfig) -> AsyncIterator[list[Any]]:
        connect_ray("")
        pool = WorkerPool(
            RayLauncher(config.device),
            config,
            config.model,
            DEPLOYMENT,
            load_format="dummy",
            max_queue=config.max_queue,
        )
        try:
            await pool.start(1)
            yield [grpc_service(pool)]
        finally:
            await pool.close()

    return run_service(config, build)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stack(model: Path, args: argparse.Namespace, logs: Path) -> Iterator[dict[str, str]]:
    """Tokenizer, scheduler and router, one process each; yields the router's addresses once healthy."""
    ports = {name: free_port() for name in ("tokenizer", "scheduler", "router", "http")}
    cairn = [sys.executable, "-P", "-m", "cairn.cli"]
    commands = {
        "tokenizer": [
            *cairn,
            "tokenizer",
            "serve",
            f"--port={ports['tokenizer']}",
            "--metrics-port=0",
            "--registry-address=",
            f"--preload=[{model}]",
            "--threads=8",
        ],
        "scheduler": [
            sys.executable,
            __file__,
            "serve-scheduler",
            str(model),
            f"--port={ports['scheduler']}",
            f"--options={json.dumps(engine_options(args))}",
        ],
        "router": [
            *cairn,
            "router",
            "serve",
            f"--port={ports['router']}",
            f"--http-port={ports['http']}",
            "--metrics-port=0",
            f"--tokenizer-address=127.0.0.1:{ports['tokenizer']}",
            f'--deployments={{{DEPLOYMENT}: ["127.0.0.1:{ports["scheduler"]}"]}}',
            "--max-running=100000",
            "--max-queue=100000",
        ],
    }
    processes = []
    try:
        for name, command in commands.items():
            log = (logs / f"{name}.log").open("w")
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
        http = f"http://127.0.0.1:{ports['http']}"
        wait_healthy(http, processes, timeout=args.startup_timeout)
        yield {"grpc": f"127.0.0.1:{ports['router']}", "http": http}
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_healthy(http: str, processes: Sequence[subprocess.Popen], timeout: float) -> None:
    import urllib.error
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        dead = [p.args for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a service exited while starting: {dead[0]}; see the logs")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(f"{http}/health", timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(1.0)
    raise RuntimeError(f"the stack was not healthy within {timeout:.0f}s; see the logs")


# ---------------------------------------------------------------- plot

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def _text(x: float, y: float, text: str, anchor: str = "middle", **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{text}</text>'


def _chart(
    title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]], x0: int, y0: int
) -> str:
    """One line chart, 420 x 260 at (x0, y0); x is positional (rates include inf), y linear from 0."""
    xs = sorted({x for points in series.values() for x, _ in points}, key=lambda v: (math.isinf(v), v))
    top = max((y for points in series.values() for _, y in points if math.isfinite(y)), default=1.0) or 1.0
    left, bottom, width, height = x0 + 60, y0 + 220, 340, 180
    parts = [
        _text(x0 + 210, y0 + 20, title, font_weight="bold"),
        f'<line x1="{left}" y1="{bottom}" x2="{left + width}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - height}" stroke="black"/>',
        _text(left + width / 2, bottom + 35, xlabel),
        _text(x0 + 12, bottom - height / 2, ylabel, transform=f"rotate(-90 {x0 + 12} {bottom - height / 2})"),
        _text(left - 5, bottom - height + 4, f"{top:.3g}", "end"),
        _text(left - 5, bottom + 4, "0", "end"),
    ]

    def px(x: float) -> float:
        return left + (xs.index(x) + 0.5) * width / max(len(xs), 1)

    parts.extend(_text(px(x), bottom + 16, "inf" if math.isinf(x) else f"{x:g}") for x in xs)
    for i, (name, points) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        ordered = sorted((p for p in points if math.isfinite(p[1])), key=lambda p: xs.index(p[0]))
        coords = [(px(x), bottom - height * y / top) for x, y in ordered]
        line = " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{line}"/>')
        parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in coords)
        parts.append(_text(left + width - 70, y0 + 40 + 16 * i, name, "start", fill=color))
    return "\n".join(parts)


def _bars(title: str, bars: list[tuple[str, float]], x0: int, y0: int) -> str:
    top = max((v for _, v in bars), default=1.0) or 1.0
    parts = [_text(x0 + 210, y0 + 20, title, font_weight="bold")]
    for i, (name, value) in enumerate(bars):
        h, x = 170 * value / top, x0 + 70 + i * 110
        parts.append(
            f'<rect x="{x}" y="{y0 + 220 - h:.1f}" width="70" height="{h:.1f}" fill="{_COLORS[0]}"/>'
        )
        parts.append(_text(x + 35, y0 + 236, name))
        parts.append(_text(x + 35, y0 + 214 - h, f"{value:.0f}"))
    return "\n".join(parts)


def plot(results: dict[str, Any], path: Path) -> None:
    client = results["client"]

    def series(runs: list[dict], key: str, metric: Callable[[dict], float | None]) -> dict[str, list]:
        out: dict[str, list[tuple[float, float]]] = {}
        for run in runs:
            x = math.inf if run[key] == "inf" else float(run[key])
            value = metric(run)
            out.setdefault(run["api"], []).append((x, math.nan if value is None else value))
        return out

    def ms(name: str, quantile: str) -> Callable[[dict], float | None]:
        return lambda run: run[name][quantile] * 1e3 if run[name] else None

    def throughput(run: dict) -> float:
        return run["output_tokens_per_s"]

    rates, conc = client["rate_sweep"], client["concurrency_sweep"]
    charts = [
        ("output tokens/s by request rate", "requests/s", "tok/s", series(rates, "rate", throughput)),
        ("TTFT p50 by request rate", "requests/s", "ms", series(rates, "rate", ms("ttft_s", "p50"))),
        (
            "output tokens/s by concurrency",
            "concurrent requests",
            "tok/s",
            series(conc, "concurrency", throughput),
        ),
        (
            "TPOT p50 by concurrency",
            "concurrent requests",
            "ms",
            series(conc, "concurrency", ms("tpot_s", "p50")),
        ),
        (
            "ITL p99 by concurrency",
            "concurrent requests",
            "ms",
            series(conc, "concurrency", ms("itl_s", "p99")),
        ),
    ]
    body = [_chart(t, x, y, s, 440 * (i % 2), 270 * (i // 2)) for i, (t, x, y, s) in enumerate(charts)]
    reference = [(api, run["output_tokens_per_s"]) for api, run in client["reference"].items()]
    if "engine" in results:
        reference.insert(0, ("in-process", results["engine"]["output_tokens_per_s"]))
    body.append(_bars("reference workload, output tok/s", reference, 440, 540))
    header = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="880" height="810" '
        'font-family="sans-serif" font-size="12">'
    )
    path.write_text(
        "\n".join([header, '<rect width="100%" height="100%" fill="white"/>', *body, "</svg>", ""])
    )


# ---------------------------------------------------------------- main


def workload_prompts(args: argparse.Namespace, vocab: int) -> list[list[int]]:
    from throughput import load_workload

    workload = load_workload(args.workload)
    prompts, _ = workload.reference_workload(
        n=args.requests, vocab=min(args.workload_vocab, vocab), output_len=args.output_len
    )
    return prompts


def record(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from provenance import git_commit

    return {
        "commit": args.commit or git_commit(),
        "command": " ".join(["python", "bench/serving.py", *argv]),
        "host": {"node": os.uname().nodename, "cpu_count": os.cpu_count(), **gpu_info()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
    }


def gpu_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}


def run_stack(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from engine_decode import SHAPES

    results = record(args, argv)
    vocab = SHAPES[args.shape]["vocab_size"]
    prompts = workload_prompts(args, vocab)
    with tempfile.TemporaryDirectory(prefix="cairn-serving-") as tmp:
        model = model_dir(args.shape, Path(tmp) / "model")
        if not args.skip_engine:
            results["engine"] = engine_baseline(model, args, prompts)
            print(
                f"in-process engine {results['engine']['output_tokens_per_s']:10.0f} output tok/s", flush=True
            )
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        with stack(model, args, logs) as targets:
            results["client"] = asyncio.run(run_client(args, prompts, {a: targets[a] for a in args.apis}))
    if "engine" in results:
        results["stack_vs_engine"] = {
            api: run["output_tokens_per_s"] / results["engine"]["output_tokens_per_s"]
            for api, run in results["client"]["reference"].items()
        }
        for api, ratio in results["stack_vs_engine"].items():
            print(f"full {api} path / in-process engine: {ratio:.2f} (target >= 0.90)", flush=True)
    return results


def run_against(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    results = record(args, argv)
    prompts = workload_prompts(args, args.vocab)
    targets = {"grpc": args.grpc, "http": args.http}
    results["client"] = asyncio.run(
        run_client(args, prompts, {a: t for a, t in targets.items() if t and a in args.apis})
    )
    return results


def _floats(text: str) -> list[float]:
    return [math.inf if v.strip() == "inf" else float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def load_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True, help="JSON results path")
        p.add_argument("--plot", type=Path, help="SVG plot path")
        p.add_argument("--apis", type=lambda t: t.split(","), default=["grpc", "http"], help="grpc,http")
        p.add_argument("--workload", type=Path, help="the reference workload.py (default: shared/bench/)")
        p.add_argument(
            "--workload-vocab", type=int, default=32000, help="prompt token ids are drawn below this"
        )
        p.add_argument("--requests", type=int, default=512, help="requests of the reference run")
        p.add_argument("--output-len", type=int, default=256)
        p.add_argument(
            "--rates", type=_floats, default=[8.0, 32.0, math.inf], help="request-rate sweep, req/s"
        )
        p.add_argument("--concurrency", type=_ints, default=[1, 16, 64, 256], help="concurrency sweep")
        p.add_argument("--sweep-requests", type=int, default=256, help="requests per sweep point")
        p.add_argument("--commit", help="commit to record when the tree is a copy without .git")

    served = commands.add_parser("stack", help="start the full stack here and measure it next to the engine")
    load_options(served)
    served.add_argument(
        "--shape", default="8b", help="model shape from bench/engine_decode.py: 8b, 0.5b, tiny"
    )
    served.add_argument("--device", default="cuda")
    served.add_argument("--dtype", default="bfloat16")
    served.add_argument("--max-num-seqs", type=int, default=512)
    served.add_argument("--max-num-batched-tokens", type=int, default=8192)
    served.add_argument("--max-model-len", type=int, default=4096)
    served.add_argument("--num-scheduler-steps", type=int, default=8)
    served.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    served.add_argument("--cpu-kv-cache-gb", type=float, default=1.0)
    served.add_argument("--skip-engine", action="store_true", help="no in-process engine baseline")
    served.add_argument("--startup-timeout", type=float, default=300.0)
    served.add_argument("--logs", type=Path, help="directory for the services' logs (default: a temp dir)")
    served.set_defaults(func=run_stack, model=DEPLOYMENT)

    client = commands.add_parser("client", help="measure a running router")
    load_options(client)
    client.add_argument("--http", default="", help="router HTTP base URL, e.g. http://127.0.0.1:8000")
    client.add_argument("--grpc", default="", help="router gRPC address, e.g. 127.0.0.1:50051")
    client.add_argument("--model", required=True)
    client.add_argument(
        "--vocab", type=int, default=2048, help="the model's vocabulary (prompt ids stay below)"
    )
    client.set_defaults(func=run_against)

    scheduler = commands.add_parser("serve-scheduler", help=argparse.SUPPRESS)
    scheduler.add_argument("model_dir", type=Path)
    scheduler.add_argument("--port", type=int, required=True)
    scheduler.add_argument("--options", required=True)
    scheduler.set_defaults(func=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.command == "serve-scheduler":
        return serve_scheduler(args)
    results = args.func(args, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    if args.plot:
        plot(results, args.plot)
    print(f"results in {args.out}" + (f", plot in {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
