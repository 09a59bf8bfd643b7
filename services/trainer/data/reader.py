"""Read a dataset file into Examples; a bad line fails with its file and line number."""

from __future__ import annotations

import json
from pathlib import Path

from cairn.common.errors import InvalidArgument

from ..plan import DatasetFormat
from .examples import Document, Example
from .formats import detect_format, parse_record

# Read as one raw-text document each, instead of JSONL.
TEXT_SUFFIXES = (".txt", ".md")


def read_examples(path: Path, dataset_format: DatasetFormat) -> tuple[DatasetFormat, list[Example]]:
    """The examples of `path` and the format they were read as (detected from the first line on AUTO)."""
    if path.suffix in TEXT_SUFFIXES and dataset_format in (DatasetFormat.AUTO, DatasetFormat.TEXT):
        return DatasetFormat.TEXT, [Document(path.read_text(encoding="utf-8"))]
    examples: list[Example] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidArgument(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            try:
                if dataset_format == DatasetFormat.AUTO:
                    if not isinstance(record, dict):
                        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                    dataset_format = detect_format(record)
                examples.append(parse_record(dataset_format, record))
            except ValueError as e:
                raise InvalidArgument(f"{where}: {e} ({dataset_format.value} format)") from None
    if not examples:
        raise InvalidArgument(f"{path.name} holds no examples")
    return dataset_format, examples
