"""`cairn batch`: a JSONL file of prompts through the offline engine into a JSONL of results.

Each input line is one JSON object with exactly one of
    "prompt": "text"                     (tokenized with the model's tokenizer)
    "prompt_token_ids": [1, 2, 3]
    "messages": [{"role": "user", "content": "..."}]   (the model's chat template)
plus optionally "id" (echoed back), "n", "adapter" (a LoRA adapter: PEFT
directory or registry reference; needs --max-loras), and any SamplingParams field
("max_tokens", "temperature", "top_p", "seed", "stop_token_ids", ...), which
override the command's defaults for that line. Blank lines are skipped.

Output line k answers the k-th non-blank input line, in input order:
    {"line": 3, "id": ..., "outputs": [{"text", "token_ids", "finish_reason"}], "usage": {...}}
or, for a line that could not run,
    {"line": 3, "id": ..., "error": "what was wrong"}
A bad line is also reported on stderr with its line number; the others run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cairn.common.errors import CairnError, InvalidArgument
from cairn.services.scheduler.offline import LLM, BatchRequest, GenerationResult, Prompt
from cairn.services.worker.sampling_params import SamplingParams

SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
_PROMPT_FIELDS = ("prompt", "prompt_token_ids", "messages")
_OTHER_FIELDS = frozenset({"id", "n", "adapter", *_PROMPT_FIELDS})


@dataclass
class BatchSummary:
    succeeded: int = 0
    failed: int = 0

    @property
    def exit_code(self) -> int:
        """0 when any line produced output (or there were none), 1 when every line failed."""
        return 1 if self.failed and not self.succeeded else 0


def parse_line(text: str, defaults: Mapping[str, Any]) -> tuple[Any, BatchRequest]:
    """(id, request) for one input line; InvalidArgument saying what is wrong with it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _OTHER_FIELDS - SAMPLING_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown fields {unknown}")
    given = [name for name in _PROMPT_FIELDS if name in data]
    if len(given) != 1:
        raise InvalidArgument(f"give exactly one of {', '.join(_PROMPT_FIELDS)} (got {given or 'none'})")
    value = data[given[0]]
    if given[0] == "prompt":
        if not isinstance(value, str) or not value:
            raise InvalidArgument('"prompt" must be a non-empty string')
        prompt = Prompt(text=value)
    elif given[0] == "prompt_token_ids":
        if not isinstance(value, list) or not all(type(t) is int for t in value):
            raise InvalidArgument('"prompt_token_ids" must be a list of integers')
        prompt = Prompt(token_ids=value)
    else:
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            raise InvalidArgument('"messages" must be a list of {"role": ..., "content": ...} objects')
        prompt = Prompt(messages=value)
    n = data.get("n", 1)
    if type(n) is not int or n < 1:
        raise InvalidArgument('"n" must be an integer >= 1')
    adapter = data.get("adapter", "")
    if not isinstance(adapter, str):
        raise InvalidArgument('"adapter" must be a string: a PEFT directory or a registry reference')
    fields = {**defaults, **{k: v for k, v in data.items() if k in SAMPLING_FIELDS}}
    try:
        # JSON has no tuples and only string keys.
        if "stop_token_ids" in fields:
            fields["stop_token_ids"] = tuple(fields["stop_token_ids"])
        if "logit_bias" in fields:
            fields["logit_bias"] = {int(k): float(v) for k, v in fields["logit_bias"].items()}
        sampling = SamplingParams(**fields)
    except (TypeError, ValueError, AttributeError) as err:
        raise InvalidArgument(f"bad sampling field: {err}") from None
    return data.get("id"), BatchRequest(prompt, sampling, n, adapter)


def result_record(line: int, request_id: Any, result: GenerationResult) -> dict[str, Any]:
    record: dict[str, Any] = {"line": line}
    if request_id is not None:
        record["id"] = request_id
    record["outputs"] = [
        {
            "text": c.text,
            "token_ids": c.token_ids,
            "finish_reason": c.finish_reason.value if c.finish_reason else None,
        }
        for c in result.outputs
    ]
    record["usage"] = {
        "prompt_tokens": len(result.prompt_token_ids),
        "completion_tokens": sum(len(c.token_ids) for c in result.outputs),
        "cached_prompt_tokens": result.num_cached_tokens,
    }
    return record


def error_record(line: int, request_id: Any, error: CairnError) -> dict[str, Any]:
    record: dict[str, Any] = {"line": line}
    if request_id is not None:
        record["id"] = request_id
    record["error"] = error.message
    return record


class _OrderedWriter:
    """Writes records in input order, each as soon as all before it are written."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.ready: dict[int, dict[str, Any]] = {}
        self.next = 0

    def put(self, position: int, record: dict[str, Any]) -> None:
        self.ready[position] = record
        while self.next in self.ready:
            self.out.write(json.dumps(self.ready.pop(self.next), ensure_ascii=False) + "\n")
            self.next += 1
        self.out.flush()


def run_batch(
    llm: LLM,
    input_path: Path,
    output_path: Path,
    defaults: Mapping[str, Any],
    *,
    progress: bool = True,
    stderr: TextIO | None = None,
) -> BatchSummary:
    """Runs every line of `input_path`; `stderr` (default sys.stderr) gets bad lines' reports."""
    stderr = stderr or sys.stderr
    summary = BatchSummary()
    # (line number, id) per non-blank line, in order; requests for the parsable ones.
    lines: list[tuple[int, Any]] = []
    requests: list[BatchRequest] = []
    positions: list[int] = []
    errors: list[tuple[int, CairnError]] = []
    with input_path.open(encoding="utf-8") as source:
        for number, text in enumerate(source, 1):
            if not text.strip():
                continue
            try:
                request_id, request = parse_line(text, defaults)
            except InvalidArgument as err:
                errors.append((len(lines), err))
                lines.append((number, None))
                continue
            positions.append(len(lines))
            requests.append(request)
            lines.append((number, request_id))

    def report(position: int, err: CairnError) -> None:
        number, request_id = lines[position]
        summary.failed += 1
        _write_error(f"line {number}: {err.message}", stderr, progress)
        writer.put(position, error_record(number, request_id, err))

    with output_path.open("w", encoding="utf-8") as out:
        writer = _OrderedWriter(out)
        for position, err in errors:
            report(position, err)
        for index, result in llm.results(requests, progress=progress):
            position = positions[index]
            if isinstance(result, CairnError):
                report(position, result)
                continue
            number, request_id = lines[position]
            summary.succeeded += 1
            writer.put(position, result_record(number, request_id, result))
    return summary


def _write_error(message: str, stderr: TextIO, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        # Keeps a progress bar on the same stream intact.
        tqdm.write(message, file=stderr)
    else:
        print(message, file=stderr)
