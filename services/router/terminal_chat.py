"""`cairn chat`: a conversation in the terminal, streamed from the router's ChatStream.

Each answer is printed as it arrives and kept in the history, so the model
sees the whole conversation. Ctrl-C stops the answer being written (the
router aborts it); Ctrl-D, /exit or /quit ends the chat; /reset forgets it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import grpc

from cairn.common.channel import make_channel
from cairn.v1 import common_pb2, inference_pb2, inference_pb2_grpc

DEFAULT_ROUTER = "127.0.0.1:50051"


def _metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def pick_model(stub: inference_pb2_grpc.InferenceStub, api_key: str) -> str:
    models = stub.ListModels(inference_pb2.ListServedModelsRequest(), metadata=_metadata(api_key), timeout=30)
    base = [m.id for m in models.models if not m.base_model]
    if not base:
        raise SystemExit("the router serves no model yet; is a scheduler up?")
    return base[0]


def run_chat(
    target: str,
    *,
    model: str = "",
    api_key: str = "",
    system: str = "",
    temperature: float = 0.7,
    max_tokens: int = 512,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    with make_channel(target, aio=False) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        try:
            model = model or pick_model(stub, api_key)
        except grpc.RpcError as e:
            print(f"cannot reach the router at {target}: {e.details()}", file=out)
            return 1
        print(f"chatting with {model} through {target}; Ctrl-D or /exit ends, /reset forgets", file=out)
        history = [common_pb2.ChatMessage(role="system", content=system)] if system else []
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                print(file=out)
                return 0
            if line in ("/exit", "/quit"):
                return 0
            if line == "/reset":
                history = history[:1] if system else []
                print("(conversation reset)", file=out)
                continue
            if not line:
                continue
            history.append(common_pb2.ChatMessage(role="user", content=line))
            request = inference_pb2.ChatRequest(
                model=model,
                messages=history,
                options=inference_pb2.GenerationOptions(
                    sampling=common_pb2.SamplingParams(temperature=temperature),
                    stop=common_pb2.StopCriteria(max_tokens=max_tokens),
                ),
            )
            answer = _stream_answer(stub, request, api_key, out)
            if answer is None:
                history.pop()
            else:
                history.append(common_pb2.ChatMessage(role="assistant", content=answer))


def _stream_answer(
    stub: inference_pb2_grpc.InferenceStub, request: inference_pb2.ChatRequest, api_key: str, out: TextIO
) -> str | None:
    """The answer as printed; None if it failed (the question is then dropped from the history)."""
    call = stub.ChatStream(request, metadata=_metadata(api_key))
    parts: list[str] = []
    print("assistant> ", end="", file=out, flush=True)
    try:
        for message in call:
            for delta in message.deltas:
                text = delta.content + "".join(
                    f"[calls {c.name}({c.arguments_json})]" for c in delta.tool_calls
                )
                parts.append(text)
                print(text, end="", file=out, flush=True)
    except KeyboardInterrupt:
        call.cancel()
        print(" (stopped)", file=out)
        return "".join(parts)
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=out)
        return None
    print(file=out)
    return "".join(parts)
