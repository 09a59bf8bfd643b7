"""Content helpers shared by the registry tests: finalized versions in one call, directory checksums."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from cairn.services.registry.client import MARKER, RegistryClient
from cairn.services.registry.records import Version


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `root`, the materialize marker left out."""
    return {
        p.relative_to(root).as_posix(): sha256_of(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def upload(client: RegistryClient, draft: Version, path: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch) / "upload"
        file.write_bytes(content)
        client.upload_file(draft.model, draft.number, path, file)


def ready(client: RegistryClient, name: str, content: bytes = b"w", **kwargs: object) -> Version:
    """A finalized version of `name` holding one small file; `kwargs` go to create_version."""
    draft = client.create_version(name, **kwargs)  # type: ignore[arg-type]
    upload(client, draft, "w.bin", content)
    return client.finalize(name, draft.number)
