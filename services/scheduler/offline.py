"""Offline batch inference in this process: no Ray, no gRPC, no server.

    llm = LLM("tiny-llama@production", device="cpu")
    results = llm.generate(["Hello", "The sky is"], SamplingParams(temperature=0.0, max_tokens=32))

One engine (policy + block pool + continuous batching) drives one in-process
ModelRunner; every prompt is queued at once and the engine keeps the device
full. Keyword options are `EngineOptions` fields. Text prompts and chat
messages go through the model's own tokenizer and chat template.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cairn.common.errors import CairnError, InvalidArgument
from cairn.services.scheduler.engine import Engine, Sink
from cairn.services.scheduler.metrics import EngineMetrics
from cairn.services.scheduler.output import RequestOutput
from cairn.services.scheduler.sequence import AdapterRef, FinishReason, Request
from cairn.services.scheduler.service_config import EngineOptions
from cairn.services.scheduler.worker_client import LocalWorkerClient
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import SampledToken


@dataclass(frozen=True)
class Prompt:
    """One prompt: text, token ids, or chat messages for the model's chat template."""

    text: str | None = None
    token_ids: Sequence[int] | None = None
    messages: Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("text", "token_ids", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InvalidArgument(
                f"a prompt is exactly one of text, token_ids or messages; got {given or 'none'}"
            )


PromptLike = str | Sequence[int] | Prompt


@dataclass(frozen=True)
class BatchRequest:
    prompt: PromptLike
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    # A LoRA adapter to run with: a PEFT directory or a registry reference ("" is the base model).
    adapter: str = ""


@dataclass
class Completion:
    """One generated sample."""

    index: int
    token_ids: list[int]
    finish_reason: FinishReason | None
    cumulative_logprob: float
    # Set when the request asked for logprobs: one entry per token.
    logprobs: list[SampledToken]
    # Decoded without special tokens, when the model has a tokenizer.
    text: str | None = None


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    outputs: list[Completion]
    num_cached_tokens: int
    prompt_logprobs: list[SampledToken]
    # time.monotonic() at submission, first output token and finish.
    arrival_time: float
    first_token_time: float | None
    finish_time: float


class _Collector:
    """The engine's sink for one request: gathers its deltas until it finishes."""

    def __init__(self, index: int, request: Request, done: asyncio.Queue[int]) -> None:
        self.index = index
        self.request = request
        self.done = done
        n = request.n
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[SampledToken]] = [[] for _ in range(n)]
        self.reasons: list[FinishReason | None] = [None] * n
        self.cumulative = [0.0] * n
        self.num_cached_tokens = 0
        self.prompt_logprobs: list[SampledToken] = []
        self.first_token_time: float | None = None
        self.finish_time = 0.0
        self.error: CairnError | None = None

    def fail(self, error: CairnError) -> None:
        """The request could not run after all (its adapter did not load)."""
        self.error = error
        self.done.put_nowait(self.index)

    def __call__(self, output: RequestOutput) -> None:
        if output.prompt_logprobs or output.num_cached_tokens:
            self.prompt_logprobs = output.prompt_logprobs
            self.num_cached_tokens = output.num_cached_tokens
        for sample in output.samples:
            i = sample.index
            self.tokens[i] += sample.token_ids
            self.logprobs[i] += sample.logprobs
            self.reasons[i] = sample.finish_reason
            self.cumulative[i] = sample.cumulative_logprob
            if self.first_token_time is None and sample.token_ids:
                self.first_token_time = time.monotonic()
        if output.finished:
            self.finish_time = time.monotonic()
            self.done.put_nowait(self.index)

    def result(self, decode: Callable[[list[int]], str | None]) -> GenerationResult:
        outputs = [
            Completion(i, tokens, reason, cumulative, logprobs, decode(tokens))
            for i, (tokens, reason, cumulative, logprobs) in enumerate(
                zip(self.tokens, self.reasons, self.cumulative, self.logprobs, strict=True)
            )
        ]
        return GenerationResult(
            self.request.prompt_token_ids,
            outputs,
            self.num_cached_tokens,
            self.prompt_logprobs,
            self.request.arrival_time,
            self.first_token_time,
            self.finish_time,
        )


class LLM:
    def __init__(self, model: str, *, load_format: str = "safetensors", **options: Any) -> None:
        self.options = EngineOptions(**options)
        self._loop = asyncio.new_event_loop()
        self._worker = LocalWorkerClient("offline-0")
        try:
            self.info = self._loop.run_until_complete(
                self._worker.load(self.options.engine_config(model, load_format))
            )
            self.engine = Engine.for_worker(
                self._worker, self.info, self.options, EngineMetrics("offline"), on_reject=_reject
            )
            self._loop.run_until_complete(self._start())
        except BaseException:
            self.close()
            raise
        self.model_dir = self._worker.runner.model_dir
        self._tokenizer: Any = None
        self._decode: Callable[[list[int]], str | None] | None = None
        self._batches = itertools.count()

    async def _start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if getattr(self, "engine", None) is not None:
            self._loop.run_until_complete(self.engine.stop())
        self._loop.run_until_complete(self._worker.close())
        self._loop.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (a transformers one); FailedPrecondition if it has none."""
        if self._tokenizer is None:
            from cairn.services.tokenizer.model_tokenizer import load_model_tokenizer

            self._tokenizer = load_model_tokenizer(self.model_dir, str(self.model_dir))
        return self._tokenizer

    def generate(
        self,
        prompts: Sequence[PromptLike],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        n: int = 1,
        adapter: str | Sequence[str] = "",
        progress: bool = False,
    ) -> list[GenerationResult]:
        """Results in prompt order. Raises the first prompt's error, naming its index.

        `adapter`: the LoRA adapter (PEFT directory or registry reference) of every prompt, or
        one per prompt; "" is the base model. Needs `max_loras` > 0."""
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise InvalidArgument(f"{len(prompts)} prompts but {len(sampling_params)} sampling params")
        adapters = [adapter] * len(prompts) if isinstance(adapter, str) else list(adapter)
        if len(adapters) != len(prompts):
            raise InvalidArgument(f"{len(prompts)} prompts but {len(adapters)} adapters")
        requests = [
            BatchRequest(p, s, n, a) for p, s, a in zip(prompts, sampling_params, adapters, strict=True)
        ]
        results: list[GenerationResult | None] = [None] * len(requests)
        for index, result in self.results(requests, progress=progress):
            if isinstance(result, CairnError):
                raise type(result)(f"prompt {index}: {result.message}")
            results[index] = result
        return results

    def results(
        self, requests: Sequence[BatchRequest], *, progress: bool = False
    ) -> Iterator[tuple[int, GenerationResult | CairnError]]:
        """(index, result or error) per request as each completes; requests that
        cannot run (bad prompt, too long, ...) come first, as errors."""
        batch = next(self._batches)
        done: asyncio.Queue[int] = asyncio.Queue()
        collectors: dict[int, _Collector] = {}
        failures: list[tuple[int, CairnError]] = []
        for index, item in enumerate(requests):
            try:
                request = Request(
                    f"b{batch}-{index}",
                    self._token_ids(item.prompt),
                    item.sampling,
                    n=item.n,
                    # Adapters get a prefix-cache namespace of their own, as in the service.
                    cache_key=item.adapter or None,
                    adapter=AdapterRef(item.adapter, item.adapter) if item.adapter else None,
                )
                collector = _Collector(index, request, done)
                self.engine.add(request, collector)
            except CairnError as err:
                failures.append((index, err))
                continue
            collectors[index] = collector
        bar = _progress_bar(len(requests)) if progress else None
        pending = set(collectors)
        decode = self._decoder() if collectors else None
        try:
            for index, err in failures:
                _advance(bar)
                yield index, err
            while pending:
                index = self._loop.run_until_complete(done.get())
                pending.discard(index)
                _advance(bar)
                collector = collectors[index]
                yield index, collector.error or collector.result(decode)
        finally:
            if bar is not None:
                bar.close()
            for index in pending:
                self.engine.abort(collectors[index].request.request_id)
            if pending:
                self._loop.run_until_complete(self.engine.wait_idle(None))

    def _token_ids(self, prompt: PromptLike) -> list[int]:
        if isinstance(prompt, str):
            prompt = Prompt(text=prompt)
        elif not isinstance(prompt, Prompt):
            prompt = Prompt(token_ids=prompt)
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise InvalidArgument("token ids must be integers")
            return ids
        tokenizer = self.tokenizer
        if prompt.messages is not None:
            from cairn.services.tokenizer.chat import render_chat
            from cairn.services.tokenizer.records import ChatInput

            text = render_chat(tokenizer, ChatInput(list(prompt.messages)), allow_request_template=False)
            return tokenizer.hf.encode(text, add_special_tokens=False)
        return tokenizer.hf.encode(prompt.text)

    def _decoder(self) -> Callable[[list[int]], str | None]:
        """Token ids to text, or to None when the model has no tokenizer (e.g. a
        benchmark's bare config.json)."""
        if self._decode is None:
            try:
                hf = self.tokenizer.hf
                self._decode = lambda tokens: hf.decode(tokens, skip_special_tokens=True)
            except CairnError:
                self._decode = lambda tokens: None
        return self._decode


def _reject(sink: Sink, error: CairnError) -> None:
    if isinstance(sink, _Collector):
        sink.fail(error)


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="req", dynamic_ncols=True)


def _advance(bar: Any) -> None:
    if bar is not None:
        bar.update(1)
