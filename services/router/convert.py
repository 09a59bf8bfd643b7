"""The router's results as cairn.v1 Inference messages."""

from __future__ import annotations

from collections.abc import Sequence

from cairn.v1 import common_pb2, inference_pb2

from .chat import ChatChunk, ChatResult
from .core import Tokenized
from .generation import FinishedSeq, Generation, SeqChunk, Usage
from .routing import ServedModel
from .tool_calls import ToolCall


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


def tool_calls_to_proto(calls: Sequence[ToolCall]) -> list[common_pb2.ToolCall]:
    return [
        common_pb2.ToolCall(id=c.id, type="function", name=c.name, arguments_json=c.arguments_json)
        for c in calls
    ]


def generate_response(
    generation: Generation, seqs: Sequence[FinishedSeq], fingerprint: str
) -> inference_pb2.GenerateResponse:
    spec = generation.spec
    echo = spec.echo_text if spec.echo else ""
    return inference_pb2.GenerateResponse(
        id=spec.request_id,
        model=spec.target.name,
        completions=[
            inference_pb2.Completion(
                index=s.index,
                text=echo + s.text,
                tokens=s.tokens,
                finish_reason=s.finish_reason,
                matched_stop=s.matched_stop,
            )
            for s in seqs
        ],
        usage=usage_to_proto(generation.usage),
        prompt_tokens=generation.prompt_tokens if spec.echo else [],
        system_fingerprint=fingerprint,
    )


def generate_stream_response(
    generation: Generation, chunks: Sequence[SeqChunk]
) -> inference_pb2.GenerateStreamResponse:
    return inference_pb2.GenerateStreamResponse(
        id=generation.spec.request_id,
        model=generation.spec.target.name,
        deltas=[
            inference_pb2.CompletionDelta(
                index=c.index,
                text=c.text,
                tokens=c.tokens,
                finish_reason=c.finish_reason,
                matched_stop=c.matched_stop,
            )
            for c in chunks
        ],
    )


def chat_message(result: ChatResult) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(
        role="assistant", content=result.content, tool_calls=tool_calls_to_proto(result.tool_calls)
    )


def chat_response(
    generation: Generation, results: Sequence[ChatResult], fingerprint: str
) -> inference_pb2.ChatResponse:
    return inference_pb2.ChatResponse(
        id=generation.spec.request_id,
        model=generation.spec.target.name,
        choices=[
            inference_pb2.ChatChoice(
                index=r.index, message=chat_message(r), tokens=r.tokens, finish_reason=r.finish_reason
            )
            for r in results
        ],
        usage=usage_to_proto(generation.usage),
        system_fingerprint=fingerprint,
    )


def chat_stream_response(
    generation: Generation, chunks: Sequence[ChatChunk]
) -> inference_pb2.ChatStreamResponse:
    return inference_pb2.ChatStreamResponse(
        id=generation.spec.request_id,
        model=generation.spec.target.name,
        deltas=[
            inference_pb2.ChatDelta(
                index=c.index,
                role=c.role,
                content=c.content,
                tool_calls=tool_calls_to_proto(c.tool_calls),
                tokens=c.tokens,
                finish_reason=c.finish_reason,
            )
            for c in chunks
        ],
    )


def tokenize_response(tokenized: Tokenized) -> inference_pb2.TokenizeResponse:
    return inference_pb2.TokenizeResponse(
        token_ids=tokenized.token_ids, tokens=tokenized.tokens, max_model_len=tokenized.max_model_len
    )


def models_response(models: Sequence[ServedModel]) -> inference_pb2.ListServedModelsResponse:
    return inference_pb2.ListServedModelsResponse(
        models=[
            inference_pb2.ServedModel(
                id=m.id,
                source=m.source,
                base_model=m.base_model,
                max_model_len=m.max_model_len,
                created=m.created,
            )
            for m in models
        ]
    )
