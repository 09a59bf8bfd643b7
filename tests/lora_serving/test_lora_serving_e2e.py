"""Issue #9's acceptance, end to end on loopback: a LoRA job through the trainer service
publishes an adapter to the registry; the router serves it by its registry name (the
official `openai` client over HTTP), mixed in one batch with base-model requests, with the
greedy tokens of the PEFT-merged HF model. Adapters published after start-up serve without a
restart; an adapter of another base model, an unknown name and a full model named as an
adapter are refused with their status.

The stack: registry, trainer, tokenizer (loading from the registry), a scheduler serving
`tiny@1` from the registry with an in-process worker that records each step's adapters, and
the router with both APIs.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from loopback import LoopThread, Served, registry_on_loopback
from lora_serving_harness import (
    CHATS,
    TRAIN_ARGS,
    RecordingLauncher,
    chat_prompt_ids,
    chat_records,
    hf_greedy,
    make_peft_adapter,
)
from transformers import AutoTokenizer

from cairn.common.server import start_server
from cairn.jobs.config import JobsConfig
from cairn.services.registry.client import RegistryClient
from cairn.services.router.config import RouterConfig
from cairn.services.router.server import RouterRuntime
from cairn.services.scheduler.pool import WorkerPool
from cairn.services.scheduler.server import grpc_service
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.services.tokenizer.config import TokenizerConfig
from cairn.services.tokenizer.server import tokenizer_services
from cairn.services.trainer.client import TrainerClient
from cairn.services.trainer.config import TrainerConfig
from cairn.services.trainer.jobfile import spec_from_yaml
from cairn.services.trainer.server import trainer_services
from cairn.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2

MAX_TOKENS = 12


@dataclass
class Router:
    runtime: RouterRuntime
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.http_port}/v1"


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def registry(loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    """The registry; workers and the scheduler find it through $CAIRN_REGISTRY, as in a cluster."""
    served = registry_on_loopback(tmp_path_factory.mktemp("registry"), loop)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAIRN_REGISTRY", served.address)
        env.setenv("CAIRN_HOME", str(tmp_path_factory.mktemp("cairn-home")))
        with RegistryClient(served.address) as client:
            yield client
    served.stop()


@pytest.fixture(scope="module")
def base_ref(registry: RegistryClient, tiny_model_dir: Path) -> str:
    return registry.push_dir(tiny_model_dir, "tiny", aliases=["production"]).ref


@pytest.fixture(scope="module")
def trained(
    loop: LoopThread, registry: RegistryClient, base_ref: str, tmp_path_factory: pytest.TempPathFactory
) -> trainer_pb2.TrainJob:
    """The LoRA job on the memorization set, run by the trainer service to completion."""
    root = tmp_path_factory.mktemp("trainer")
    config = TrainerConfig(
        root=root,
        registry=registry.target,
        cache_dir=root / "cache",
        port=0,
        metrics_port=0,
        log_level="WARNING",
        jobs=JobsConfig(max_concurrent=1, poll_interval_s=0.05, liveness_interval_s=0.2),
    )
    served = Served(loop, config, trainer_services)
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records()))
    spec = spec_from_yaml(
        {
            "base_model": base_ref,
            "method": "lora",
            "dataset": {"uri": str(data)},
            "output": {"name": "memo-lora"},
            "lora": {"r": 8},
            "args": TRAIN_ARGS,
        }
    )
    try:
        with TrainerClient(served.address) as trainer:
            job = trainer.submit(spec)
            for event in trainer.watch(job.id):
                if event.status.state in (
                    common_pb2.JOB_STATE_SUCCEEDED,
                    common_pb2.JOB_STATE_FAILED,
                    common_pb2.JOB_STATE_CANCELLED,
                ):
                    break
            done = trainer.get(job.id)
    finally:
        served.stop()
    assert done.status.state == common_pb2.JOB_STATE_SUCCEEDED, done.status.error
    return done


@pytest.fixture(scope="module")
def adapter_ref(trained: trainer_pb2.TrainJob) -> str:
    return f"{trained.status.result.model}@{trained.status.result.version}"


@pytest.fixture(scope="module")
def local_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT directory served as the static LoRA module "local" (vLLM's --lora-modules)."""
    out = tmp_path_factory.mktemp("local-lora")
    return make_peft_adapter(tiny_model_dir, out, r=4, targets=["q_proj", "v_proj", "down_proj"], seed=1)


@contextmanager
def _scheduler(
    loop: LoopThread, model: str, deployment: str, lora_modules: dict[str, str]
) -> Iterator[tuple[Any, RecordingLauncher]]:
    """A scheduler service serving `model` with an in-process recording worker."""
    config = SchedulerServiceConfig(
        model=model,
        deployment=deployment,
        device="cpu",
        dtype="float32",
        block_size=16,
        max_model_len=256,
        max_num_seqs=16,
        max_num_batched_tokens=256,
        num_blocks=256,
        num_workers=1,
        max_loras=2,
        max_lora_rank=16,
        lora_modules=lora_modules,
        lora_scan_interval_s=0.2,
        port=0,
        metrics_port=0,
        log_level="WARNING",
    )
    launcher = RecordingLauncher()
    pool = WorkerPool(
        launcher,
        config,
        config.model,
        deployment,
        lora_modules=config.lora_modules,
        lora_scan_interval_s=config.lora_scan_interval_s,
    )

    async def start() -> Any:
        await pool.start(1)
        return await start_server(config, [grpc_service(pool)])

    running = loop.run(start())
    try:
        yield running, launcher
    finally:
        loop.run(running.stop(None))
        loop.run(pool.close())


@pytest.fixture(scope="module")
def scheduler(
    loop: LoopThread, base_ref: str, adapter_ref: str, local_adapter: Path
) -> Iterator[tuple[Any, RecordingLauncher]]:
    """Deployment "tiny": the base of the trained adapter, with the LoRA module "local"."""
    with _scheduler(loop, "tiny@production", "tiny", {"local": str(local_adapter)}) as served:
        yield served


@pytest.fixture(scope="module")
def narrow_model(tiny_model_factory: Any) -> Path:
    return tiny_model_factory(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def narrow_ref(registry: RegistryClient, narrow_model: Path) -> str:
    return registry.push_dir(narrow_model, "tiny-narrow").ref


@pytest.fixture(scope="module")
def narrow_scheduler(loop: LoopThread, narrow_ref: str) -> Iterator[tuple[Any, RecordingLauncher]]:
    """Deployment "narrow": another base model (hidden size 32), LoRA on."""
    with _scheduler(loop, narrow_ref, "narrow", {}) as served:
        yield served


@pytest.fixture(scope="module")
def router(
    loop: LoopThread,
    registry: RegistryClient,
    base_ref: str,
    scheduler: tuple[Any, RecordingLauncher],
    narrow_scheduler: tuple[Any, RecordingLauncher],
    narrow_ref: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Router]:
    tokenizer_config = TokenizerConfig(
        port=0,
        metrics_port=0,
        log_level="WARNING",
        registry_address=registry.target,
        cache_dir=tmp_path_factory.mktemp("tokenizer-cache"),
        preload=["tiny@production", narrow_ref],
        threads=2,
    )
    tokenizer = Served(loop, tokenizer_config, tokenizer_services)
    running, narrow = scheduler[0], narrow_scheduler[0]
    config = RouterConfig(
        port=0,
        metrics_port=0,
        http_port=0,
        log_level="WARNING",
        tokenizer_address=tokenizer.address,
        deployments={"tiny": [f"127.0.0.1:{running.port}"], "narrow": [f"127.0.0.1:{narrow.port}"]},
        tokenizers={"tiny": "tiny@production", "narrow": narrow_ref},
        refresh_interval_s=0.2,
    )

    async def start() -> tuple[RouterRuntime, Any]:
        runtime = RouterRuntime(config)
        await runtime.start()
        return runtime, await start_server(config, runtime.grpc_services())

    runtime, server = loop.run(start())
    yield Router(runtime, server.port)
    loop.run(server.stop(None))
    loop.run(runtime.close())
    tokenizer.stop()
    # The tokenizer server froze the session's objects out of the cyclic GC; other suites need it back.
    gc.unfreeze()


@pytest.fixture(scope="module")
def client(router: Router) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=router.http_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def adapter_dir(registry: RegistryClient, adapter_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registry.materialize(adapter_ref, tmp_path_factory.mktemp("oracle"))


def _chat(client: openai.OpenAI, model: str, question: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=MAX_TOKENS, temperature=0
    )
    return response.choices[0].message.content


def test_trained_adapter_answers_from_memory_in_batches_shared_with_the_base_model(
    client: openai.OpenAI,
    scheduler: tuple[Any, RecordingLauncher],
    tokenizer: Any,
    tiny_model_dir: Path,
    adapter_dir: Path,
    local_adapter: Path,
) -> None:
    _, launcher = scheduler
    [worker] = launcher.workers
    jobs = [(model, q) for q, _ in CHATS for model in ("memo-lora", "tiny", "local")]
    with ThreadPoolExecutor(len(jobs)) as threads:
        answers = dict(zip(jobs, threads.map(lambda job: _chat(client, *job), jobs), strict=True))

    for question, answer in CHATS:
        assert answers["memo-lora", question] == answer
        assert answers["tiny", question] != answer
        prompt = chat_prompt_ids(tokenizer, question)
        for model, adapter in (("memo-lora", adapter_dir), ("tiny", None), ("local", local_adapter)):
            want = hf_greedy(tiny_model_dir, adapter, prompt, MAX_TOKENS)
            assert answers[model, question] == tokenizer.decode(want, skip_special_tokens=True), model
    assert answers["local", CHATS[0][0]] != answers["tiny", CHATS[0][0]]
    # One batch ran base-model sequences beside sequences of both adapters.
    assert any({"", "memo-lora@1", "local"} <= step for step in worker.steps), worker.steps


def test_models_list_adapters_with_their_base(
    client: openai.OpenAI, router: Router, adapter_ref: str, local_adapter: Path
) -> None:
    _chat(client, "memo-lora", CHATS[0][0])
    models = {m.id: m for m in client.models.list()}
    assert {"tiny", "local", "memo-lora"} <= set(models)
    assert models["tiny"].parent is None
    assert (models["memo-lora"].parent, models["memo-lora"].root) == ("tiny", adapter_ref)
    assert (models["local"].parent, models["local"].root) == ("tiny", str(local_adapter))

    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        listed = inference_pb2_grpc.InferenceStub(channel).ListModels(inference_pb2.ListServedModelsRequest())
    served = {m.id: m for m in listed.models}
    assert (served["memo-lora"].base_model, served["memo-lora"].source) == ("tiny", adapter_ref)
    assert served["tiny"].base_model == ""


def test_registry_adapters_are_listed_before_anyone_requests_them(
    client: openai.OpenAI, registry: RegistryClient, base_ref: str, local_adapter: Path
) -> None:
    version = registry.push_dir(local_adapter, "listed-lora", format="peft-adapter", parents=[base_ref])
    deadline = time.monotonic() + 30
    while "listed-lora" not in (listed := {m.id: m for m in client.models.list()}):
        assert time.monotonic() < deadline, sorted(listed)
        time.sleep(0.1)
    assert (listed["listed-lora"].parent, listed["listed-lora"].root) == ("tiny", version.ref)


def test_an_adapter_published_after_start_up_is_served_without_a_restart(
    client: openai.OpenAI,
    registry: RegistryClient,
    base_ref: str,
    router: Router,
    tokenizer: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late-lora", prompt="Once upon a time", max_tokens=8)
    directory = make_peft_adapter(
        tiny_model_dir, tmp_path / "late", r=8, targets=["k_proj", "o_proj", "gate_proj", "up_proj"], seed=2
    )
    version = registry.push_dir(directory, "late-lora", format="peft-adapter", parents=[base_ref])

    response = client.completions.create(
        model="late-lora", prompt="Once upon a time", max_tokens=MAX_TOKENS, temperature=0
    )
    prompt = tokenizer.encode("Once upon a time")
    want = hf_greedy(tiny_model_dir, directory, prompt, MAX_TOKENS)
    assert response.choices[0].text == tokenizer.decode(want, skip_special_tokens=True)
    assert want != hf_greedy(tiny_model_dir, None, prompt, MAX_TOKENS)
    assert response.model == "late-lora"
    assert {m.id: m.root for m in client.models.list()}["late-lora"] == version.ref


def test_an_adapter_goes_to_the_deployment_of_its_base_model(
    client: openai.OpenAI,
    registry: RegistryClient,
    narrow_model: Path,
    narrow_ref: str,
    narrow_scheduler: tuple[Any, RecordingLauncher],
    tokenizer: Any,
    tmp_path: Path,
) -> None:
    directory = make_peft_adapter(
        narrow_model, tmp_path / "narrow", r=4, targets=["q_proj", "v_proj"], seed=3
    )
    registry.push_dir(directory, "narrow-lora", format="peft-adapter", parents=[narrow_ref])

    response = client.completions.create(
        model="narrow-lora", prompt="Hello", max_tokens=MAX_TOKENS, temperature=0
    )
    want = hf_greedy(narrow_model, directory, tokenizer.encode("Hello"), MAX_TOKENS)
    assert response.choices[0].text == tokenizer.decode(want, skip_special_tokens=True)
    _, launcher = narrow_scheduler
    assert ("load", "narrow-lora@1") in launcher.workers[0].events
    assert {m.id: m.parent for m in client.models.list()}["narrow-lora"] == "narrow"


def test_an_adapter_of_a_base_model_no_deployment_serves_is_refused(
    client: openai.OpenAI, registry: RegistryClient, tiny_model_factory: Any, router: Router, tmp_path: Path
) -> None:
    wide = tiny_model_factory(hidden_size=96, num_heads=4, num_kv_heads=2, intermediate_size=192)
    wide_ref = registry.push_dir(wide, "tiny-wide").ref
    directory = make_peft_adapter(wide, tmp_path / "wide", r=4, targets=["q_proj", "v_proj"], seed=4)
    registry.push_dir(directory, "wide-lora", format="peft-adapter", parents=[wide_ref])

    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="wide-lora", prompt="Hello", max_tokens=4)
    message = str(refused.value)
    for deployment, serves in (("tiny", "tiny@1"), ("narrow", "tiny-narrow@1")):
        assert f"trained on {wide_ref}, but deployment {deployment!r} serves {serves}" in message, message

    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(inference_pb2.GenerateRequest(model="wide-lora", text="Hello"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Without lineage the registry cannot tell; the worker's shape check refuses it.
    registry.push_dir(directory, "wide-orphan", format="peft-adapter")
    with pytest.raises(openai.BadRequestError, match="different base model"):
        client.completions.create(model="wide-orphan", prompt="Hello", max_tokens=4)
    # The stack still serves afterwards.
    assert client.completions.create(model="tiny", prompt="Hello", max_tokens=2).choices[0].text is not None


def test_unknown_names_and_full_models_are_not_adapters(
    client: openai.OpenAI, registry: RegistryClient, tiny_model_dir: Path, local_adapter: Path
) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="no-such-lora", prompt="Hello", max_tokens=4)
    copy = registry.push_dir(tiny_model_dir, "tiny-copy")
    with pytest.raises(openai.BadRequestError, match="tiny-copy@1 is a 'hf-model', not a LoRA adapter"):
        client.completions.create(model="tiny-copy", prompt="Hello", max_tokens=4)
    # Lineage to a copy of the served version (same files, same digest) is lineage to it.
    registry.push_dir(local_adapter, "copy-lora", format="peft-adapter", parents=[copy.ref])
    assert (
        client.completions.create(model="copy-lora", prompt="Hello", max_tokens=2).choices[0].text is not None
    )
