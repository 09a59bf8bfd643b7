"""Model references to loaded tokenizers, with a bounded LRU of what is loaded.

A reference is a local model directory (it starts with "/" or ".", or names an
existing directory) or a registry reference ("name", "name@3",
"name@production"). Registry models are fetched once into `cache_dir`, and only
their tokenizer files: a tokenizer replica never downloads weights.

Tokenizers are cached by what they were loaded from: the pinned version
("name@3", immutable) or the directory and its files' stat. A moving
reference (latest, an alias) is re-resolved once `resolve_ttl_s` has passed,
so an alias moved to a new version serves the new tokenizer from then on.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path

from prometheus_client import Histogram

from cairn.common.errors import FailedPrecondition, InvalidArgument
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.refs import parse_ref

from .model_tokenizer import ModelTokenizer, is_tokenizer_file, load_model_tokenizer

LOAD_SECONDS = Histogram(
    "cairn_tokenizer_load_seconds",
    "Time to load one tokenizer (registry pull included), by where it came from.",
    ["source"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class TokenizerLoader:
    def __init__(
        self,
        *,
        registry: RegistryClient | None,
        cache_dir: Path,
        max_cached: int = 16,
        resolve_ttl_s: float = 10.0,
        allow_local_dirs: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`registry` None: only local directories resolve."""
        if max_cached < 1:
            raise ValueError("max_cached must be at least 1")
        self._registry = registry
        self._cache_dir = cache_dir
        self._max_cached = max_cached
        self._ttl = resolve_ttl_s
        self._allow_local_dirs = allow_local_dirs
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: OrderedDict[Hashable, ModelTokenizer] = OrderedDict()
        self._loading: dict[Hashable, Future[ModelTokenizer]] = {}
        # Moving reference -> (pinned reference, when to ask the registry again).
        self._resolved: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Tokenizers loaded so far, evicted ones included.
        self.loads = 0

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    def get(self, ref: str) -> ModelTokenizer:
        """The tokenizer `ref` names, loading it (blocking, once per version) when it is not cached."""
        directory = self._local_dir(ref)
        if directory is not None:
            path = directory.resolve()
            key = ("dir", str(path), _fingerprint(path))
            return self._get_or_load(key, "dir", lambda: load_model_tokenizer(path, str(path)))
        pinned = self._pin(ref)
        return self._get_or_load(("registry", pinned), "registry", lambda: self._load_from_registry(pinned))

    def peek(self, ref: str) -> ModelTokenizer | None:
        """The tokenizer for `ref` if it is cached and current, without blocking on the registry or a load."""
        directory = self._local_dir(ref)
        if directory is not None:
            path = directory.resolve()
            return self._cached(("dir", str(path), _fingerprint(path)))
        pinned = self._pinned_without_registry(ref)
        return self._cached(("registry", pinned)) if pinned is not None else None

    def _local_dir(self, ref: str) -> Path | None:
        if not ref:
            raise InvalidArgument(
                "model is required: a registry reference (name@version) or a model directory"
            )
        if not self._allow_local_dirs:
            return None
        if ref.startswith(("/", ".")) or Path(ref).is_dir():
            return Path(ref)
        return None

    def _pinned_without_registry(self, ref: str) -> str | None:
        parsed = parse_ref(ref)
        if parsed.version is not None:
            return str(parsed)
        with self._lock:
            hit = self._resolved.get(str(parsed))
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    def _pin(self, ref: str) -> str:
        """The pinned reference ("name@3") that `ref` names now."""
        pinned = self._pinned_without_registry(ref)
        if pinned is not None:
            return pinned
        moving = str(parse_ref(ref))
        version = self._registry_client(ref).resolve(moving)
        with self._lock:
            self._resolved[moving] = (version.ref, self._clock() + self._ttl)
            self._resolved.move_to_end(moving)
            # Bounded like the tokenizers: a client naming endless aliases must not grow it.
            while len(self._resolved) > 4 * self._max_cached:
                self._resolved.popitem(last=False)
        return version.ref

    def _registry_client(self, ref: str) -> RegistryClient:
        if self._registry is None:
            raise FailedPrecondition(
                f"{ref!r} is not a local model directory and this tokenizer service has no registry "
                "configured (set registry_address)"
            )
        return self._registry

    def _load_from_registry(self, pinned: str) -> ModelTokenizer:
        client = self._registry_client(pinned)
        version = client.resolve(pinned)
        wanted = [a for a in version.artifacts if is_tokenizer_file(a.path)]
        if not wanted:
            raise FailedPrecondition(
                f"{pinned} ({version.format}) has no tokenizer files; an adapter or weights-only "
                "version is tokenized with its base model's tokenizer"
            )
        directory = self._cache_dir / version.model / str(version.number)
        for artifact in wanted:
            client.download(version, artifact, directory / artifact.path)
        return load_model_tokenizer(directory, pinned)

    def _cached(self, key: Hashable) -> ModelTokenizer | None:
        with self._lock:
            tokenizer = self._loaded.get(key)
            if tokenizer is not None:
                self._loaded.move_to_end(key)
            return tokenizer

    def _get_or_load(self, key: Hashable, source: str, load: Callable[[], ModelTokenizer]) -> ModelTokenizer:
        """The cached tokenizer for `key`, or `load()`; concurrent callers of one key share one load."""
        with self._lock:
            tokenizer = self._loaded.get(key)
            if tokenizer is not None:
                self._loaded.move_to_end(key)
                return tokenizer
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return pending.result()
        try:
            with LOAD_SECONDS.labels(source).time():
                tokenizer = load()
        except BaseException as e:
            with self._lock:
                del self._loading[key]
            pending.set_exception(e)
            raise
        with self._lock:
            self._loaded[key] = tokenizer
            while len(self._loaded) > self._max_cached:
                self._loaded.popitem(last=False)
            del self._loading[key]
            self.loads += 1
        pending.set_result(tokenizer)
        return tokenizer


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime, size) of the tokenizer files: a directory whose files changed loads again."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    found = []
    for entry in entries:
        if is_tokenizer_file(entry.name) and entry.is_file():
            stat = entry.stat()
            found.append((entry.name, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(found))
