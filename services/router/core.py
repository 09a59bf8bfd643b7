"""The router's operations on cairn.v1 requests: what the gRPC servicer and the HTTP app both call.

A generation passes, in order: the caller's key and rate (`authorize`), the
model name (`RoutingTable.resolve`: NOT_FOUND names the served models), a
running slot (`AdmissionGate`: RESOURCE_EXHAUSTED when the queue is full),
tokenization (the tokenizer service, chat template included), validation
against the deployment's limits, and then a scheduler replica
(`Generation`). `generate` and `chat` are context managers: leaving them,
however that happens, aborts whatever still runs and frees the slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import TypeVar

from cairn.common.errors import DeadlineExceeded, InvalidArgument
from cairn.services.tokenizer.client import TokenizerClient
from cairn.services.tokenizer.records import ChatInput
from cairn.services.worker.convert import sampling_from_proto, sampling_to_proto
from cairn.v1 import common_pb2, inference_pb2, scheduler_pb2

from .admission import AdmissionGate
from .auth import ApiKeys, Principal
from .chat import ChatGeneration, messages_to_dicts, tools_to_dicts
from .detokenizer import Detokenizer
from .generation import Generation, GenerationSpec
from .rate_limit import RateLimiter
from .routing import Replica, RoutingTable, ServedModel, Target
from .stop_strings import check_stop_strings
from .tool_calls import tool_policy

logger = logging.getLogger("cairn.router")

MAX_BEST_OF = 128
ABORT_TIMEOUT_S = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class Tokenized:
    token_ids: list[int]
    tokens: list[str]
    max_model_len: int


def cairn_version() -> str:
    try:
        return metadata.version("cairn")
    except metadata.PackageNotFoundError:
        return "dev"


class RouterCore:
    def __init__(
        self,
        table: RoutingTable,
        tokenizer: TokenizerClient,
        detokenizer: Detokenizer,
        *,
        keys: ApiKeys | None = None,
        limiter: RateLimiter | None = None,
        gate: AdmissionGate | None = None,
        request_timeout_s: float = 600.0,
        system_fingerprint: str = "",
    ) -> None:
        self.table = table
        self.tokenizer = tokenizer
        self.detokenizer = detokenizer
        self.keys = keys or ApiKeys({})
        self.limiter = limiter or RateLimiter(0)
        self.gate = gate or AdmissionGate(max_running=1024, max_queue=1024)
        self.request_timeout_s = request_timeout_s
        self._fingerprint = system_fingerprint
        self._aborts: set[asyncio.Future[object]] = set()

    async def close(self) -> None:
        if self._aborts:
            await asyncio.gather(*self._aborts, return_exceptions=True)

    def authorize(self, authorization: str | None) -> Principal:
        """The caller behind an Authorization value, counted against its rate limit."""
        principal = self.keys.authenticate(authorization)
        self.limiter.check(principal)
        return principal

    def deadline(self, timeout_s: float | None) -> float:
        """Monotonic deadline of a request: the caller's timeout, capped by request_timeout_s."""
        limit = self.request_timeout_s if timeout_s is None else min(timeout_s, self.request_timeout_s)
        return time.monotonic() + max(limit, 0.0)

    def fingerprint(self, target: Target) -> str:
        if self._fingerprint:
            return self._fingerprint
        digest = hashlib.sha256(f"cairn-{cairn_version()}|{target.info.model}".encode()).hexdigest()
        return f"fp_{digest[:10]}"

    def list_models(self) -> list[ServedModel]:
        return self.table.served_models()

    async def tokenize(self, request: inference_pb2.TokenizeRequest, *, deadline: float) -> Tokenized:
        target = await self.table.resolve(request.model)
        which = request.WhichOneof("input")
        if which == "text":
            add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
            encode = self.tokenizer.encode(
                target.tokenizer_model, [request.text], add_special_tokens=add_special
            )
        elif which == "chat":
            chat = ChatInput(messages_to_dicts(request.chat.messages))
            encode = self.tokenizer.encode(target.tokenizer_model, [chat])
        else:
            raise InvalidArgument("give the text or the chat messages to tokenize")
        [encoding] = await _within(encode, deadline)
        texts = await _within(
            self.detokenizer.token_texts(target.tokenizer_model, encoding.token_ids), deadline
        )
        return Tokenized(
            encoding.token_ids, [texts[t] for t in encoding.token_ids], target.info.max_model_len
        )

    @asynccontextmanager
    async def generate(
        self, request: inference_pb2.GenerateRequest, *, deadline: float, stream: bool = False
    ) -> AsyncIterator[Generation]:
        """A completion of a text or token-id prompt; iterate `steps()` or await `collect()` inside."""
        async with self.generate_all([request], deadline=deadline, stream=stream) as [generation]:
            yield generation

    @asynccontextmanager
    async def generate_all(
        self, requests: Sequence[inference_pb2.GenerateRequest], *, deadline: float, stream: bool = False
    ) -> AsyncIterator[list[Generation]]:
        """The completions of several prompts of one call (OpenAI's prompt lists).

        They share one running slot: a batch taking a slot per prompt could
        wait forever for slots its own other prompts hold.
        """
        started = time.monotonic()
        for request in requests:
            _check_counts(request.options, stream)
        targets = [await self.table.resolve(r.model) for r in requests]
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.gate.slot(_remaining(deadline)))
            generations = []
            for request, target in zip(requests, targets, strict=True):
                spec = await self._completion_spec(request, target, deadline)
                generation = Generation(
                    spec, self.table, self.detokenizer, deadline=deadline, abort=self._abort, started=started
                )
                stack.push_async_callback(generation.close)
                generations.append(generation)
                _log_request("generate", spec, request.options.user)
            yield generations

    async def _completion_spec(
        self, request: inference_pb2.GenerateRequest, target: Target, deadline: float
    ) -> GenerationSpec:
        which = request.WhichOneof("prompt")
        if which == "text":
            [encoding] = await _within(
                self.tokenizer.encode(target.tokenizer_model, [request.text]), deadline
            )
            return self._spec(
                target, encoding.token_ids, request.options, echo=request.echo, echo_text=request.text
            )
        if which != "token_ids":
            raise InvalidArgument("give the prompt as text or as token_ids")
        prompt_ids = list(request.token_ids.ids)
        if not prompt_ids:
            raise InvalidArgument("token_ids is empty; give at least one token")
        _check_token_ids(prompt_ids, target)
        echo_text = ""
        if request.echo:
            decode = self.tokenizer.decode(
                target.tokenizer_model, prompt_ids, skip_special_tokens=_skip_special(request.options)
            )
            echo_text = await _within(decode, deadline)
        return self._spec(target, prompt_ids, request.options, echo=request.echo, echo_text=echo_text)

    @asynccontextmanager
    async def chat(
        self, request: inference_pb2.ChatRequest, *, deadline: float, stream: bool = False
    ) -> AsyncIterator[ChatGeneration]:
        """An answer to a conversation, tool calls included; iterate `steps()` or await `collect()` inside."""
        started = time.monotonic()
        _check_counts(request.options, stream)
        choice = request.tool_choice.WhichOneof("choice")
        policy = tool_policy(
            tools_to_dicts(request.tools),
            request.tool_choice.mode if choice == "mode" else "",
            request.tool_choice.function_name if choice == "function_name" else "",
        )
        messages = messages_to_dicts(request.messages)
        target = await self.table.resolve(request.model)
        async with self.gate.slot(_remaining(deadline)):
            prefix = policy.forced_prefix
            if prefix:
                messages.append({"role": "assistant", "content": prefix})
            chat = ChatInput(
                messages, tools=policy.tools if policy.active else (), continue_final_message=bool(prefix)
            )
            [encoding] = await _within(self.tokenizer.encode(target.tokenizer_model, [chat]), deadline)
            spec = self._spec(target, encoding.token_ids, request.options)
            _log_request("chat", spec, request.options.user)
            generation = Generation(
                spec, self.table, self.detokenizer, deadline=deadline, abort=self._abort, started=started
            )
            try:
                yield ChatGeneration(generation, policy)
            finally:
                await generation.close()

    def _spec(
        self,
        target: Target,
        prompt_ids: Sequence[int],
        options: inference_pb2.GenerationOptions,
        *,
        echo: bool = False,
        echo_text: str = "",
    ) -> GenerationSpec:
        if not prompt_ids:
            raise InvalidArgument("the prompt is empty; give at least one token")
        info = target.info
        stop = options.stop
        check_stop_strings(stop.stop)
        _check_finite(options.sampling)
        room = info.max_model_len - len(prompt_ids)
        if stop.HasField("max_tokens"):
            if stop.max_tokens < 1:
                raise InvalidArgument(f"max_tokens must be >= 1, got {stop.max_tokens}")
            if stop.max_tokens > room:
                raise InvalidArgument(
                    f"this model's maximum context length is {info.max_model_len} tokens, but "
                    f"{len(prompt_ids) + stop.max_tokens} were requested ({len(prompt_ids)} in the prompt, "
                    f"{stop.max_tokens} for the completion); shorten the prompt or lower max_tokens"
                )
        elif room < 1:
            raise InvalidArgument(
                f"the prompt is {len(prompt_ids)} tokens long; this model's maximum context length is "
                f"{info.max_model_len} tokens, which leaves no room for a completion"
            )
        params = sampling_from_proto(options.sampling, stop, default_max_tokens=room)
        params.validate(info.vocab_size or None)
        if echo and params.logprobs is not None and params.prompt_logprobs is None:
            params = dataclasses.replace(params, prompt_logprobs=params.logprobs)
        sampling, criteria = sampling_to_proto(params)
        n = options.n or 1
        request_id = uuid.uuid4().hex
        schedule = scheduler_pb2.ScheduleRequest(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            stop=criteria,
            n=n,
            best_of=options.best_of or n,
            priority=options.priority,
            adapter=target.adapter,
        )
        return GenerationSpec(
            request_id=request_id,
            target=target,
            prompt_ids=list(prompt_ids),
            schedule=schedule,
            n=n,
            best_of=options.best_of or n,
            stops=tuple(stop.stop),
            include_stop_str_in_output=stop.include_stop_str_in_output,
            skip_special_tokens=_skip_special(options),
            min_tokens=params.min_tokens,
            logprobs=params.logprobs is not None,
            prompt_logprobs=params.prompt_logprobs is not None,
            echo=echo,
            echo_text=echo_text,
        )

    def _abort(self, replica: Replica, request_id: str) -> None:
        """Tell the scheduler to drop a request the router has given up on (idempotent, best effort)."""
        call = replica.stub.Abort(scheduler_pb2.AbortRequest(request_id=request_id), timeout=ABORT_TIMEOUT_S)
        task = asyncio.ensure_future(call)
        self._aborts.add(task)
        task.add_done_callback(self._abort_done)

    def _abort_done(self, task: asyncio.Future[object]) -> None:
        self._aborts.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.info("abort not delivered: %s", task.exception())


def _log_request(kind: str, spec: GenerationSpec, user: str) -> None:
    logger.debug(
        "%s %s on %s",
        kind,
        spec.request_id,
        spec.target.name,
        extra={"scheduler_request_id": spec.request_id, "user": user, "prompt_tokens": len(spec.prompt_ids)},
    )


def _skip_special(options: inference_pb2.GenerationOptions) -> bool:
    return options.skip_special_tokens if options.HasField("skip_special_tokens") else True


def _check_counts(options: inference_pb2.GenerationOptions, stream: bool) -> None:
    n = options.n or 1
    best_of = options.best_of or n
    if best_of < n:
        raise InvalidArgument(f"best_of ({best_of}) must be >= n ({n})")
    if best_of > MAX_BEST_OF:
        raise InvalidArgument(f"best_of (or n) must be <= {MAX_BEST_OF}, got {best_of}")
    if stream and best_of > n:
        raise InvalidArgument("best_of > n cannot stream: the best sequences are known only at the end")


def _check_finite(sampling: common_pb2.SamplingParams) -> None:
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
    ):
        value = getattr(sampling, name)
        if not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number, got {value}")
    if not all(math.isfinite(v) for v in sampling.logit_bias.values()):
        raise InvalidArgument("logit_bias values must be finite numbers")


def _check_token_ids(ids: Sequence[int], target: Target) -> None:
    vocab = target.info.vocab_size
    bad = [t for t in ids if t < 0 or (vocab and t >= vocab)]
    if bad:
        raise InvalidArgument(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("the request's deadline passed")
    return remaining


async def _within(awaitable: Coroutine[object, object, T], deadline: float) -> T:
    try:
        remaining = _remaining(deadline)
    except DeadlineExceeded:
        awaitable.close()
        raise
    try:
        return await asyncio.wait_for(awaitable, remaining)
    except asyncio.TimeoutError:
        raise DeadlineExceeded("the request's deadline passed while it was being tokenized") from None
