"""The registry: models -> versions -> artifacts, aliases and lineage, as plain Python.

Every argument is checked here (one message per mistake, for every entry
point); `store.py` keeps the metadata transactional and `blobs.py` keeps the
bytes content-addressed. The gRPC servicer only translates messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from cairn.common.errors import DataLoss, InvalidArgument, NotFound
from cairn.common.pagination import decode_token, effective_page_size, encode_token

from .blobs import BlobStore, check_sha256
from .paths import check_artifact_path
from .records import DEFAULT_CHUNK_SIZE, Alias, Artifact, Lineage, Model, Page, Version
from .refs import (
    check_alias_name,
    check_model_name,
    check_name_prefix,
    check_version_number,
    parse_ref,
)
from .store import MetadataStore

DEFAULT_LINEAGE_DEPTH = 5
MAX_LINEAGE_DEPTH = 50
MAX_DESCRIPTION = 4096
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_RECIPE_BYTES = 64 * 1024
MAX_PARENTS = 64

_FORMAT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")


class Registry:
    def __init__(
        self, store: MetadataStore, blobs: BlobStore, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.store = store
        self.blobs = blobs
        self.chunk_size = chunk_size

    @classmethod
    def open(
        cls,
        database_url: str,
        blob_url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Registry:
        return cls(
            MetadataStore(database_url),
            BlobStore(blob_url, dict(storage_options or {})),
            chunk_size=chunk_size,
        )

    def close(self) -> None:
        self.store.close()

    # ---- models

    def create_model(
        self, name: str, *, description: str = "", labels: Mapping[str, str] | None = None
    ) -> Model:
        check_model_name(name)
        return self.store.create_model(name, _description(description), _labels(labels))

    def get_model(self, name: str) -> Model:
        return self.store.get_model(check_model_name(name))

    def list_models(self, *, page_size: int = 0, page_token: str = "", name_prefix: str = "") -> Page[Model]:
        limit = effective_page_size(page_size)
        query = {"list": "models", "prefix": check_name_prefix(name_prefix)}
        items, last = self.store.list_models(limit, decode_token(page_token, query), name_prefix)
        return Page(tuple(items), encode_token(query, last) if last is not None else "")

    # ---- versions

    def create_version(
        self,
        model: str,
        *,
        format: str,
        parents: Sequence[str] = (),
        recipe: Mapping[str, Any] | None = None,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        create_model: bool = False,
    ) -> Version:
        """A new DRAFT version with the next number; parents must be READY and are recorded as lineage."""
        check_model_name(model)
        if not format:
            raise InvalidArgument('format is required: "hf-model", "peft-adapter", "compressed-tensors", ...')
        if not _FORMAT_RE.fullmatch(format):
            raise InvalidArgument(
                f"format {format!r} is malformed; use 1-64 characters of [A-Za-z0-9._-] starting with "
                'a letter or digit, e.g. "hf-model"'
            )
        if len(parents) > MAX_PARENTS:
            raise InvalidArgument(f"at most {MAX_PARENTS} parents, got {len(parents)}")
        parent_refs = [parse_ref(p) for p in parents]
        return self.store.create_version(
            model,
            create_model=create_model,
            format=format,
            parents=parent_refs,
            recipe=_recipe(recipe),
            description=_description(description),
            labels=_labels(labels),
        )

    def upload_artifact(
        self, model: str, version: int, path: str, *, size: int, sha256: str, chunks: Iterable[bytes]
    ) -> Artifact:
        """Store one artifact of a draft from a stream of chunks.

        The draft is checked before the first chunk is read; the bytes are
        verified against `size` and `sha256` as they arrive (DataLoss, nothing
        stored, on mismatch) and recorded only once complete. Uploading a path
        the draft already has replaces it.
        """
        check_model_name(model)
        check_version_number(version)
        check_artifact_path(path)
        check_sha256(sha256)
        if size < 0:
            raise InvalidArgument(f"size must be >= 0, got {size}")
        self.store.check_upload(model, version, path)
        self.blobs.put(chunks, size=size, sha256=sha256)
        return self.store.put_artifact(model, version, Artifact(path, size, sha256))

    def finalize_version(self, model: str, version: int, *, aliases: Sequence[str] = ()) -> Version:
        """DRAFT -> READY: immutable from now on, resolvable, with its digest and the given aliases."""
        check_model_name(model)
        check_version_number(version)
        names = list(dict.fromkeys(check_alias_name(a) for a in aliases))
        return self.store.finalize_version(model, version, names, self._check_blobs_stored)

    def get_version(self, ref: str) -> Version:
        return self.store.resolve(parse_ref(ref))

    def list_versions(
        self,
        model: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        include_drafts: bool = False,
        include_deleted: bool = False,
    ) -> Page[Version]:
        check_model_name(model)
        limit = effective_page_size(page_size)
        query = {"list": "versions", "model": model, "drafts": include_drafts, "deleted": include_deleted}
        items, last = self.store.list_versions(
            model,
            limit,
            decode_token(page_token, query),
            include_drafts=include_drafts,
            include_deleted=include_deleted,
        )
        return Page(tuple(items), encode_token(query, last) if last is not None else "")

    def delete_version(self, ref: str) -> Version:
        """Soft-delete a READY version (or discard a draft); refused while an alias points at it."""
        parsed = parse_ref(ref)
        if parsed.is_latest:
            raise InvalidArgument(
                f"delete needs an explicit version, e.g. {parsed.model}@3 or {parsed.model}@<alias>; "
                f"{ref!r} would delete whichever version is newest"
            )
        return self.store.delete_version(parsed)

    def download_artifact(self, ref: str, path: str, *, offset: int = 0) -> tuple[Artifact, Iterator[bytes]]:
        """The artifact's metadata and its bytes from `offset` on, in chunks of `chunk_size`."""
        check_artifact_path(path)
        version = self.get_version(ref)
        artifact = version.artifact(path)
        if artifact is None:
            listing = ", ".join(a.path for a in version.artifacts[:20])
            more = ", ..." if len(version.artifacts) > 20 else ""
            raise NotFound(f"{version.ref} has no artifact {path!r}; it has: {listing}{more}")
        if not 0 <= offset <= artifact.size:
            raise InvalidArgument(f"offset {offset} is outside {path!r} ({artifact.size} bytes)")
        return artifact, self.blobs.read(artifact.sha256, offset=offset, chunk_size=self.chunk_size)

    # ---- aliases

    def set_alias(self, model: str, alias: str, version: int) -> Alias:
        """Point `alias` at a READY version, moving it if it already exists."""
        check_model_name(model)
        check_alias_name(alias)
        check_version_number(version)
        return self.store.set_alias(model, alias, version)

    def delete_alias(self, model: str, alias: str) -> int:
        """Remove `alias`; returns the version it pointed at."""
        check_model_name(model)
        check_alias_name(alias)
        return self.store.delete_alias(model, alias)

    # ---- lineage

    def get_lineage(self, ref: str, *, depth: int = 0) -> Lineage:
        """Ancestors and descendants of a version (deleted ones included: lineage outlives them)."""
        if depth < 0:
            raise InvalidArgument(f"depth must be >= 0, got {depth}")
        return self.store.lineage(parse_ref(ref), min(depth or DEFAULT_LINEAGE_DEPTH, MAX_LINEAGE_DEPTH))

    def _check_blobs_stored(self, files: list[Artifact]) -> None:
        missing = [a.path for a in files if not self.blobs.exists(a.sha256, a.size)]
        if missing:
            raise DataLoss(
                f"the stored content of {', '.join(missing)} is missing from {self.blobs.url}; "
                "upload those artifacts again before finalizing"
            )


def _description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is {len(text)} characters long (max {MAX_DESCRIPTION})")
    return text


def _labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"label key {key!r} is malformed; use 1-63 characters of [A-Za-z0-9._/-] starting with a "
                'letter or digit, e.g. "family"'
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"label {key!r} has a value of {len(value)} characters (max {MAX_LABEL_VALUE})"
            )
    return labels


def _recipe(recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    recipe = dict(recipe or {})
    try:
        encoded = json.dumps(recipe, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(
            f"recipe must be JSON (strings, numbers, booleans, lists, objects): {e}"
        ) from None
    if len(encoded) > MAX_RECIPE_BYTES:
        raise InvalidArgument(f"recipe is {len(encoded)} bytes as JSON (max {MAX_RECIPE_BYTES})")
    return recipe
