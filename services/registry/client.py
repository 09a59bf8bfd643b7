"""Python client for the registry (blocking; for CLIs, jobs and services loading models).

    client = RegistryClient()                       # $CAIRN_REGISTRY or 127.0.0.1:50055
    version = client.push_dir("out/", "acme/llama-sft", parents=["acme/llama@3"], aliases=["staging"])
    path = client.materialize("acme/llama-sft@staging")   # a local HF directory, pulled once

Failed calls raise the typed `cairn.common.errors` exception for their status.
Every downloaded byte is checked against the artifact's sha256 before it lands
at its final path, and a push either finalizes completely or leaves no version
behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cairn.common.channel import BlockingClient, make_channel, raise_for_rpc_error
from cairn.common.errors import CairnError, DataLoss, InvalidArgument, Unavailable
from cairn.v1 import common_pb2, registry_pb2, registry_pb2_grpc

from . import convert
from .records import DEFAULT_CHUNK_SIZE, Alias, Artifact, Lineage, Model, Version
from .refs import check_alias_name, parse_ref

logger = logging.getLogger("cairn.registry.client")

DEFAULT_TARGET = "127.0.0.1:50055"
TARGET_ENV = "CAIRN_REGISTRY"
# Written into each materialized directory; its digest is what makes the cached copy reusable.
MARKER = ".cairn-version.json"
PARTIAL_SUFFIX = ".cairn-partial"
# Never pushed: VCS metadata, hub download caches, our own bookkeeping.
IGNORED_NAMES = frozenset({".git", ".cache", MARKER})
DOWNLOAD_ATTEMPTS = 4
# Files transferred at once by push_dir, pull and materialize.
PARALLEL_FILES = 4

Progress = Callable[[int], None]
T = TypeVar("T")


def default_target() -> str:
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


def default_cache_dir() -> Path:
    """$CAIRN_HOME/cache/models, else ~/.cairn/cache/models."""
    home = os.environ.get("CAIRN_HOME")
    return (Path(home) if home else Path.home() / ".cairn") / "cache" / "models"


class RegistryClient(BlockingClient):
    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        """`timeout` bounds each metadata call; transfers run as long as bytes keep flowing."""
        self.target = target or default_target()
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._channel = make_channel(
            self.target, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, aio=False
        )
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)

    # ---- models

    def create_model(
        self, name: str, *, description: str = "", labels: Mapping[str, str] | None = None
    ) -> Model:
        request = registry_pb2.CreateModelRequest(name=name, description=description, labels=labels or {})
        return convert.model_from_proto(self._call(self._stub.CreateModel, request))

    def get_model(self, name: str) -> Model:
        return convert.model_from_proto(
            self._call(self._stub.GetModel, registry_pb2.GetModelRequest(name=name))
        )

    def list_models(self, name_prefix: str = "", *, page_size: int = 0) -> Iterator[Model]:
        """Every model, newest first, fetched page by page."""
        token = ""
        while True:
            request = registry_pb2.ListModelsRequest(
                page_size=page_size, page_token=token, name_prefix=name_prefix
            )
            response = self._call(self._stub.ListModels, request)
            yield from (convert.model_from_proto(m) for m in response.models)
            token = response.next_page_token
            if not token:
                return

    # ---- versions

    def resolve(self, ref: str) -> Version:
        request = registry_pb2.GetVersionRequest(ref=common_pb2.ModelRef(ref=ref))
        return convert.version_from_proto(self._call(self._stub.GetVersion, request))

    def list_versions(
        self, model: str, *, include_drafts: bool = False, include_deleted: bool = False, page_size: int = 0
    ) -> Iterator[Version]:
        """Every version of `model`, newest first, fetched page by page."""
        token = ""
        while True:
            request = registry_pb2.ListVersionsRequest(
                model=model,
                page_size=page_size,
                page_token=token,
                include_drafts=include_drafts,
                include_deleted=include_deleted,
            )
            response = self._call(self._stub.ListVersions, request)
            yield from (convert.version_from_proto(v) for v in response.versions)
            token = response.next_page_token
            if not token:
                return

    def create_version(
        self,
        model: str,
        *,
        format: str = "hf-model",
        parents: Sequence[str] = (),
        recipe: Mapping[str, Any] | None = None,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        create_model: bool = True,
    ) -> Version:
        request = registry_pb2.CreateVersionRequest(
            model=model,
            create_model=create_model,
            format=format,
            parents=[common_pb2.ModelRef(ref=p) for p in parents],
            recipe=convert.recipe_to_struct(dict(recipe or {})),
            description=description,
            labels=labels or {},
        )
        return convert.version_from_proto(self._call(self._stub.CreateVersion, request))

    def upload_file(
        self,
        model: str,
        version: int,
        path: str,
        file: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> Artifact:
        """Upload one local file as artifact `path` of a draft; its sha256 is computed first."""
        size, sha256 = file_sha256(file)
        header = registry_pb2.UploadArtifactHeader(
            model=model, version=version, path=path, size=size, sha256=sha256
        )
        failure: list[BaseException] = []

        def requests() -> Iterator[registry_pb2.UploadArtifactRequest]:
            yield registry_pb2.UploadArtifactRequest(header=header)
            try:
                with open(file, "rb") as f:
                    while chunk := f.read(self.chunk_size):
                        yield registry_pb2.UploadArtifactRequest(chunk=chunk)
                        if progress is not None:
                            progress(len(chunk))
            except BaseException as e:
                # gRPC reports a failing request iterator only as CANCELLED; keep the real cause.
                failure.append(e)
                raise

        try:
            return convert.artifact_from_proto(self._stub.UploadArtifact(requests()))
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            raise_for_rpc_error(e)

    def finalize(self, model: str, version: int, *, aliases: Sequence[str] = ()) -> Version:
        request = registry_pb2.FinalizeVersionRequest(model=model, version=version, aliases=list(aliases))
        return convert.version_from_proto(self._call(self._stub.FinalizeVersion, request))

    def delete(self, ref: str) -> Version:
        """Soft-delete a version (or discard a draft) named by number or alias."""
        request = registry_pb2.DeleteVersionRequest(ref=common_pb2.ModelRef(ref=ref))
        return convert.version_from_proto(self._call(self._stub.DeleteVersion, request))

    # ---- aliases and lineage

    def set_alias(self, model: str, alias: str, version: int) -> Alias:
        request = registry_pb2.SetAliasRequest(model=model, alias=alias, version=version)
        return convert.alias_from_proto(self._call(self._stub.SetAlias, request))

    def delete_alias(self, model: str, alias: str) -> int:
        """Remove an alias; returns the version it pointed at."""
        request = registry_pb2.DeleteAliasRequest(model=model, alias=alias)
        return self._call(self._stub.DeleteAlias, request).version

    def show(self, ref: str, *, depth: int = 0) -> Lineage:
        """The version `ref` names (`.root`) with its ancestors and descendants."""
        request = registry_pb2.GetLineageRequest(ref=common_pb2.ModelRef(ref=ref), depth=depth)
        return convert.lineage_from_proto(self._call(self._stub.GetLineage, request))

    # ---- directories

    def push_dir(
        self,
        directory: str | os.PathLike[str],
        name: str,
        *,
        format: str = "hf-model",
        parents: Sequence[str] = (),
        recipe: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        description: str = "",
        labels: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        max_workers: int = PARALLEL_FILES,
    ) -> Version:
        """Push every file under `directory` as a new READY version of `name` (created if new).

        Draft, upload (files in parallel, each checked by sha256), finalize with
        `aliases`. On any failure, interruption included, the draft is deleted, so
        a push never leaves a half-filled version behind.
        """
        for alias in aliases:
            check_alias_name(alias)
        files = local_files(directory)
        if not files:
            raise InvalidArgument(f"{directory} has no files to push")
        draft = self.create_version(
            name, format=format, parents=parents, recipe=recipe, description=description, labels=labels
        )
        try:
            _in_parallel(
                [
                    lambda rel=rel, file=file: self.upload_file(
                        name, draft.number, rel, file, progress=progress
                    )
                    for rel, file in files
                ],
                max_workers,
            )
            return self.finalize(name, draft.number, aliases=aliases)
        except BaseException:
            self._discard(draft)
            raise

    def _discard(self, draft: Version) -> None:
        try:
            self.delete(draft.ref)
        except CairnError as e:
            logger.warning("could not discard draft %s after a failed push: %s", draft.ref, e.message)

    def pull(
        self,
        ref: str,
        dest_dir: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        max_workers: int = PARALLEL_FILES,
    ) -> Version:
        """Download every artifact of `ref` under `dest_dir`, each verified and moved into place atomically.

        Files already present with the right sha256 are kept; a download cut
        short resumes from its partial file on the next attempt.
        """
        version = self.resolve(ref)
        self._pull_version(version, Path(dest_dir), progress, max_workers)
        return version

    def _pull_version(
        self, version: Version, dest: Path, progress: Progress | None, max_workers: int
    ) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        _in_parallel(
            [
                lambda a=a: self.download(version, a, _inside(dest, a.path), progress=progress)
                for a in version.artifacts
            ],
            max_workers,
        )

    def download(
        self,
        version: Version,
        artifact: Artifact,
        target: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> None:
        """Fetch one artifact to `target`: resumable, verified, then renamed into place."""
        target = Path(target)
        if target.is_file() and file_sha256(target) == (artifact.size, artifact.sha256):
            if progress is not None:
                progress(artifact.size)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        digest = hashlib.sha256()
        offset = _resume(partial, digest, artifact.size)
        for attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                with open(partial, "ab") as out:
                    for chunk in self._download_stream(version.ref, artifact, offset):
                        out.write(chunk)
                        digest.update(chunk)
                        offset += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                break
            except Unavailable:
                if attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise
                logger.warning(
                    "download of %s:%s broke at byte %d; resuming", version.ref, artifact.path, offset
                )
                time.sleep(0.5 * 2**attempt)
        if offset != artifact.size or digest.hexdigest() != artifact.sha256:
            partial.unlink(missing_ok=True)
            raise DataLoss(
                f"{version.ref}:{artifact.path} arrived with sha256 {digest.hexdigest()} ({offset} bytes) "
                f"but the registry records {artifact.sha256} ({artifact.size} bytes); "
                "the partial file was removed, retry"
            )
        os.replace(partial, target)

    def _download_stream(self, ref: str, artifact: Artifact, offset: int) -> Iterator[bytes]:
        request = registry_pb2.DownloadArtifactRequest(
            ref=common_pb2.ModelRef(ref=ref), path=artifact.path, offset=offset
        )
        responses = self._stub.DownloadArtifact(request)
        try:
            first = next(responses, None)
            if first is None or first.WhichOneof("payload") != "header":
                raise DataLoss(f"the download of {ref}:{artifact.path} did not start with its header")
            if (first.header.size, first.header.sha256) != (artifact.size, artifact.sha256):
                raise DataLoss(f"{ref}:{artifact.path} changed on the registry while being downloaded")
            for message in responses:
                yield message.chunk
        except grpc.RpcError as e:
            raise_for_rpc_error(e)
        finally:
            responses.cancel()

    def materialize(self, ref: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
        """A local directory holding `ref`'s files: `<cache>/<name>/<version>/`, pulled at most once.

        The cached copy is reused while its digest matches the registry's; a
        pinned reference ("name@3") that is already cached keeps working while
        the registry is unreachable.
        """
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        parsed = parse_ref(ref)
        try:
            version = self.resolve(ref)
        except Unavailable:
            if parsed.version is not None:
                pinned = cache / parsed.model / str(parsed.version)
                if _cached_digest(pinned):
                    logger.warning("registry %s unreachable; using the cached %s", self.target, pinned)
                    return pinned
            raise
        target = cache / version.model / str(version.number)
        if _cached_digest(target) == version.digest:
            return target
        incoming = target.parent / f".incoming-{uuid.uuid4().hex}"
        try:
            self._pull_version(version, incoming, None, PARALLEL_FILES)
            marker = {**asdict(version), "state": version.state.value}
            (incoming / MARKER).write_text(json.dumps(marker, default=str, indent=2))
            _install(incoming, target, version.digest)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return target


def file_sha256(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, hex sha256) of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
        return f.tell(), digest.hexdigest()


def local_files(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(artifact path, file) per file under `directory`, sorted; follows symlinks, skips IGNORED_NAMES."""
    root = Path(directory)
    if not root.is_dir():
        raise InvalidArgument(f"{directory} is not a directory")
    found = []
    for current, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        for name in names:
            if name not in IGNORED_NAMES and not name.endswith(PARTIAL_SUFFIX):
                path = Path(current) / name
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _in_parallel(tasks: Iterable[Callable[[], object]], max_workers: int) -> None:
    """Run `tasks` on threads; the first failure cancels what has not started and is re-raised."""
    pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="registry-client")
    try:
        for future in as_completed([pool.submit(task) for task in tasks]):
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _inside(root: Path, relative: str) -> Path:
    """`root/relative`, refusing a path the server should never have sent (defense in depth)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataLoss(f"artifact path {relative!r} would escape {root}; refusing to write it")
    return root / relative


def _resume(partial: Path, digest: Any, size: int) -> int:
    """Bytes already in `partial` (hashed into `digest`), or 0 after discarding an unusable one."""
    if not partial.is_file():
        return 0
    if partial.stat().st_size > size:
        partial.unlink()
        return 0
    with open(partial, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
        return f.tell()


def _cached_digest(directory: Path) -> str | None:
    try:
        return json.loads((directory / MARKER).read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _install(incoming: Path, target: Path, digest: str) -> None:
    """Rename `incoming` to `target`; keep a concurrent winner with the same digest, replace a stale copy."""
    try:
        os.rename(incoming, target)
        return
    except OSError:
        if _cached_digest(target) == digest:
            return
    stale = target.parent / f".stale-{uuid.uuid4().hex}"
    os.rename(target, stale)
    os.rename(incoming, target)
    shutil.rmtree(stale, ignore_errors=True)


def materialize(
    ref: str, cache_dir: str | os.PathLike[str] | None = None, *, target: str | None = None
) -> Path:
    """`RegistryClient(target).materialize(ref, cache_dir)` for one-off use (a service loading its model)."""
    with RegistryClient(target) as client:
        return client.materialize(ref, cache_dir)
