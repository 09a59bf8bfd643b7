"""Artifact paths: relative, "/"-separated, and unable to escape their version.

Every path is later joined onto a directory on some client's disk (pull,
materialize), so anything a filesystem could read as "go elsewhere" is refused
here, once, for every entry point.
"""

from __future__ import annotations

from cairn.common.errors import InvalidArgument

MAX_PATH_LENGTH = 1024

_RULES = (
    'artifact paths are relative and "/"-separated (e.g. "config.json", "adapter/model.safetensors"): '
    'no leading "/", no "." or ".." segments, no empty segments, no backslashes or control characters'
)


def check_artifact_path(path: str) -> str:
    if not path:
        raise InvalidArgument(f"artifact path is empty; {_RULES}")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidArgument(f"artifact path is {len(path)} characters long (max {MAX_PATH_LENGTH})")
    problem = _problem(path)
    if problem:
        raise InvalidArgument(f"artifact path {path!r} {problem}; {_RULES}")
    return path


def _problem(path: str) -> str | None:
    if "\\" in path:
        return "contains a backslash"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "contains a control character"
    if path.startswith("/"):
        return "is absolute"
    if len(path) >= 2 and path[1] == ":":
        return "starts with a drive letter"
    segments = path.split("/")
    if "" in segments:
        return "has an empty segment"
    if any(seg in (".", "..") for seg in segments):
        return 'has a "." or ".." segment'
    return None


def conflicting_path(path: str, existing: list[str]) -> str | None:
    """An existing path that would need `path` to be both a file and a directory on disk."""
    for other in existing:
        if other != path and (other.startswith(path + "/") or path.startswith(other + "/")):
            return other
    return None
