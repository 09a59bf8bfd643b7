"""Async client for the tokenizer service (what the router uses).

    async with TokenizerClient("127.0.0.1:50052") as tokenizer:
        [prompt] = await tokenizer.encode("llama@production", [ChatInput(messages)])
        state = DetokenizeState.seeded(prompt.token_ids)
        results = await tokenizer.detokenize_batch([StreamStep("llama@production", new_ids, state)])

Failed calls raise the typed `cairn.common.errors` exception for their status.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from cairn.common.channel import make_channel, raise_for_rpc_error
from cairn.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from . import convert
from .records import ChatInput, Encoding, StreamResult, StreamStep, TokenizerInfo, TruncationSide

DEFAULT_TARGET = "127.0.0.1:50052"
TARGET_ENV = "CAIRN_TOKENIZER"


def default_target() -> str:
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


class TokenizerClient:
    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = 30.0,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        """`timeout` bounds each call (a cold model load included); None: no deadline."""
        self.target = target or default_target()
        self.timeout = timeout
        self._channel = make_channel(self.target, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self._stub = tokenizer_pb2_grpc.TokenizerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> TokenizerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise_for_rpc_error(e)

    async def encode(
        self,
        model: str,
        inputs: Sequence[str | ChatInput],
        *,
        add_special_tokens: bool = True,
        max_length: int = 0,
        truncation_side: TruncationSide = "right",
    ) -> list[Encoding]:
        """One Encoding per input (text, or a chat rendered with the model's template)."""
        request = tokenizer_pb2.EncodeRequest(
            model=common_pb2.ModelRef(ref=model),
            inputs=convert.inputs_to_proto(inputs),
            add_special_tokens=add_special_tokens,
            max_length=max_length,
            truncation_side=convert.truncation_side_to_proto(truncation_side),
        )
        response = await self._call(self._stub.Encode, request)
        return [convert.encoding_from_proto(e) for e in response.encodings]

    async def decode(self, model: str, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        request = tokenizer_pb2.DecodeRequest(
            model=common_pb2.ModelRef(ref=model), token_ids=token_ids, skip_special_tokens=skip_special_tokens
        )
        return (await self._call(self._stub.Decode, request)).text

    async def detokenize_batch(self, steps: Sequence[StreamStep]) -> list[StreamResult]:
        """Advance many streams (of any models) by their new tokens; results in the order of `steps`."""
        request = tokenizer_pb2.DetokenizeBatchRequest(streams=[convert.step_to_proto(s) for s in steps])
        response = await self._call(self._stub.DetokenizeBatch, request)
        return [convert.result_from_proto(r) for r in response.results]

    async def info(self, model: str) -> TokenizerInfo:
        request = tokenizer_pb2.TokenizerInfoRequest(model=common_pb2.ModelRef(ref=model))
        return convert.info_from_proto(await self._call(self._stub.GetTokenizerInfo, request))
