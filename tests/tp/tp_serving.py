"""The scheduler service serving tensor-parallel replicas in tests: a background event loop,
the service as `cairn scheduler serve` builds it (real Ray actors, real gRPC on loopback),
and greedy Generate streams."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from cairn.common.channel import make_channel
from cairn.common.server import start_server
from cairn.services.scheduler.pool import WorkerPool
from cairn.services.scheduler.server import scheduler_services
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.services.worker.driver import Driver
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

R = TypeVar("R")

BLOCK_SIZE = 4
MAX_MODEL_LEN = 256


class Loop:
    """An event loop on a thread: the service and its clients live there, tests stay synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tp-test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = 300) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def service_config(model: Path, **overrides: Any) -> SchedulerServiceConfig:
    settings: dict[str, Any] = {
        "model": str(model),
        "deployment": "tiny-tp",
        "device": "cpu",
        "dtype": "float32",
        "block_size": BLOCK_SIZE,
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": 4,
        "max_num_batched_tokens": 32,
        "num_blocks": 512,
        "num_workers": 1,
        "tensor_parallel_size": 2,
        "health_check_interval_s": 0.5,
        "health_check_timeout_s": 2.0,
        "port": 0,
        "metrics_port": 0,
    }
    return SchedulerServiceConfig(**(settings | overrides))


@contextmanager
def serve(loop: Loop, config: SchedulerServiceConfig) -> Iterator[tuple[WorkerPool, str]]:
    """(the deployment's pool, the service's address)."""
    built = scheduler_services(config)

    async def start() -> tuple[WorkerPool, Any]:
        services = await built.__aenter__()
        return services[0].servicer.pool, await start_server(config, services)

    pool, running = loop.run(start())
    try:
        yield pool, f"127.0.0.1:{running.port}"
    finally:
        loop.run(running.stop(None))
        loop.run(built.__aexit__(None, None, None))


def prompts(count: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt, max_tokens) pairs of mixed lengths."""
    rng = random.Random(seed)
    return [
        ([rng.randrange(10, 2000) for _ in range(rng.choice([1, 3, 9, 17, 40]))], rng.randint(16, 28))
        for _ in range(count)
    ]


def one_device_greedy(
    model: Path, specs: list[tuple[list[int], int]], device: str = "cpu"
) -> list[list[int]]:
    """Each prompt's greedy tokens on one device, generated alone, cut after the first EOS as
    the scheduler stops there."""
    runner = ModelRunner(
        EngineConfig(
            model=str(model),
            device=device,
            dtype="float32",
            block_size=BLOCK_SIZE,
            num_blocks=128,
            max_num_seqs=1,
            max_model_len=MAX_MODEL_LEN,
        )
    )
    runner.load()
    runner.profile_and_allocate_kv_cache()
    driver = Driver(runner)
    eos = set(runner.model_config.eos_token_ids)
    results = []
    for prompt, max_tokens in specs:
        tokens = driver.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0]
        end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
        results.append(tokens[:end])
    return results


async def generate_greedy(
    address: str, specs: list[tuple[list[int], int]], on_response: Callable[[], None] | None = None
) -> list[list[int]]:
    """Every prompt as its own concurrent Generate stream; `on_response()` after each message.
    Raises if a stream fails or never finishes."""
    async with make_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)

        async def one(index: int, prompt: list[int], max_tokens: int) -> list[int]:
            request = scheduler_pb2.ScheduleRequest(
                request_id=f"tp-{index}",
                prompt_token_ids=prompt,
                sampling=common_pb2.SamplingParams(temperature=0.0),
                stop=common_pb2.StopCriteria(max_tokens=max_tokens),
            )
            tokens: list[int] = []
            finished = False
            async for response in stub.Generate(request):
                for seq in response.sequences:
                    tokens += [t.id for t in seq.tokens]
                    finished = finished or bool(seq.finish_reason)
                if on_response is not None:
                    on_response()
            assert finished, f"request {index} ended without a finish reason"
            return tokens

        return await asyncio.gather(*(one(i, p, m) for i, (p, m) in enumerate(specs)))
