"""Which LoRA adapters a deployment serves, and where each one loads from.

Two kinds of names reach a deployment as a request's adapter:

- static ones, configured as `lora_modules` (`name=ref`, vLLM's
  `--lora-modules`): the ref is a PEFT directory or a registry reference;
- any registry reference ("acme/support-lora", "acme/support-lora@production",
  "...@3") whose version has format "peft-adapter" and was trained on the
  base model this deployment serves. These need no configuration and no
  restart: they resolve when a request (or the router, asking GetInfo) first
  names them.

The deployment also scans the registry every `scan_interval_s` (when asked
what it serves) for adapters whose newest version was trained on its base,
so GetInfo, and through it the router's model list, shows them before anyone
requested them.

A registry name resolves to one pinned version ("acme/support-lora@3"); the
workers know the adapter by that pinned name, so a newer version published
under the same name loads beside the old one instead of changing it under
running requests, and the prefix cache never mixes their KV.

The base check follows the registry's lineage: an adapter matches when one of
its parents is the deployment's model version, or holds the same files (equal
digest). Where lineage cannot decide (a deployment serving a directory that
never came from the registry, an adapter pushed without parents, a PEFT
directory), the worker's own check of the adapter's shapes against the model
is what refuses a mismatch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.services.registry.client import MARKER, RegistryClient
from cairn.services.registry.records import Version, VersionKey
from cairn.services.registry.refs import parse_ref
from cairn.services.scheduler.sequence import AdapterRef

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "peft-adapter"
# A registry name resolves to a pinned version for this long; then an alias that
# moved, or a newer version, is picked up by the next request.
RESOLVE_TTL_S = 10.0
REGISTRY_TIMEOUT_S = 10.0
SCAN_INTERVAL_S = 30.0


@dataclass(frozen=True)
class BaseModel:
    """The registry version a deployment serves, when it is one."""

    key: VersionKey
    digest: str

    def __str__(self) -> str:
        return str(self.key)


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter a deployment can serve, as SchedulerInfo lists it."""

    name: str
    ref: AdapterRef
    # What it was trained on, as far as known ("" when unknown).
    base_model: str


def parse_lora_modules(value: object) -> dict[str, str]:
    """`name=ref` pairs (vLLM's --lora-modules) as a mapping; accepts a mapping, a list of
    "name=ref" strings, or one string of them separated by commas or spaces."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]
        pairs = []
        for item in items:
            name, sep, ref = item.partition("=")
            if not sep:
                raise ValueError(f"lora module {item!r} is not name=ref (e.g. support=acme/support-lora@3)")
            pairs.append((name.strip(), ref.strip()))
    modules: dict[str, str] = {}
    for name, ref in pairs:
        if not name or not ref:
            raise ValueError(f"lora module {name}={ref} needs both a name and a reference or directory")
        if name in modules:
            raise ValueError(f"lora module {name!r} is given twice")
        modules[name] = ref
    return modules


class AdapterCatalogue:
    def __init__(
        self,
        deployment: str,
        model: str,
        lora_modules: Mapping[str, str],
        *,
        enabled: bool = True,
        scan_interval_s: float = SCAN_INTERVAL_S,
    ) -> None:
        self.deployment = deployment
        self.scan_interval_s = scan_interval_s
        self.model = model
        self.static = dict(lora_modules)
        self.enabled = enabled
        self.base: BaseModel | None = None
        # Opened by start(): a deployment without adapters never needs the registry.
        self._client: RegistryClient | None = None
        # Names resolved so far (listed from then on), with when they must be resolved again.
        self._known: dict[str, tuple[AdapterEntry, float]] = {}
        self._lock = asyncio.Lock()
        # The registry's adapters of this base as the last scan found them, and what each
        # (model, newest version) the scans saw turned out to be.
        self._scanned: dict[str, AdapterEntry] = {}
        self._checked: dict[tuple[str, int], AdapterEntry | None] = {}
        self._scan: asyncio.Task[None] | None = None
        self._scanned_at = -scan_interval_s

    async def start(self) -> None:
        """Finds the base model's registry version (lineage checks need it)."""
        self._client = RegistryClient(timeout=REGISTRY_TIMEOUT_S)
        self.base = await asyncio.to_thread(self._find_base)
        self._start_scan()
        if self.static:
            log.info("deployment %s: LoRA modules %s", self.deployment, self.static)

    async def close(self) -> None:
        if self._scan is not None:
            self._scan.cancel()
            await asyncio.gather(self._scan, return_exceptions=True)
        if self._client is not None:
            self._client.close()

    def listed(self) -> list[AdapterEntry]:
        """Static modules first, then the registry adapters the last scan found or requests
        resolved. Starts a scan of the registry when the last one is older than scan_interval_s."""
        self._start_scan()
        entries = {name: self._static_entry(name) for name in self.static}
        for name, entry in self._scanned.items():
            entries.setdefault(name, entry)
        for name, (entry, _) in self._known.items():
            entries[name] = entry
        return list(entries.values())

    def _start_scan(self) -> None:
        now = time.monotonic()
        if not self.enabled or self.base is None or self._scan is not None:
            return
        if now - self._scanned_at < self.scan_interval_s:
            return
        self._scanned_at = now
        self._scan = asyncio.create_task(self._run_scan(), name=f"cairn-lora-scan-{self.deployment}")

    async def _run_scan(self) -> None:
        try:
            self._scanned = await asyncio.to_thread(self._scan_registry)
        except Exception as error:
            log.warning("deployment %s could not list the registry's adapters: %s", self.deployment, error)
        finally:
            self._scan = None

    async def resolve(self, name: str) -> AdapterEntry:
        """What `name` loads; NotFound if it names no adapter (or LoRA is off here),
        InvalidArgument if it is not an adapter of this deployment's base model."""
        if not self.enabled:
            raise NotFound(
                f"adapter {name!r} is not served by deployment {self.deployment!r}, which serves no LoRA "
                "adapters (max_loras is 0)"
            )
        known = self._known.get(name)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        async with self._lock:
            known = self._known.get(name)
            if known is not None and known[1] > time.monotonic():
                return known[0]
            try:
                entry = await asyncio.to_thread(self._resolve, name)
            except (NotFound, InvalidArgument):
                self._known.pop(name, None)
                raise
            self._known[name] = (entry, time.monotonic() + RESOLVE_TTL_S)
            return entry

    # ------------------------------------------------------------ blocking (threads)

    def _find_base(self) -> BaseModel | None:
        path = Path(self.model).expanduser()
        if path.is_dir():
            # A directory the registry materialized says which version it holds.
            try:
                marker = json.loads((path / MARKER).read_text())
                return BaseModel(VersionKey(marker["model"], int(marker["number"])), marker["digest"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        version = self._registry().resolve(self.model)
        return BaseModel(version.key, version.digest)

    def _registry(self) -> RegistryClient:
        if self._client is None:
            raise FailedPrecondition(
                f"the adapter catalogue of deployment {self.deployment!r} is not started"
            )
        return self._client

    def _scan_registry(self) -> dict[str, AdapterEntry]:
        registry = self._registry()
        found = {}
        for model in registry.list_models():
            if not model.latest_version:
                continue
            key = (model.name, model.latest_version)
            if key not in self._checked:
                self._checked[key] = self._adapter_of_base(registry, model.name)
            entry = self._checked[key]
            if entry is not None:
                found[model.name] = entry
        return found

    def _adapter_of_base(self, registry: RegistryClient, name: str) -> AdapterEntry | None:
        """`name`'s newest version as an adapter of this base, or None; only lineage counts here."""
        try:
            version = registry.resolve(name)
            if version.format != ADAPTER_FORMAT or not version.parents:
                return None
            self._check_base(registry, name, version)
        except (NotFound, InvalidArgument):
            return None
        return _entry(name, version)

    def _static_entry(self, name: str) -> AdapterEntry:
        known = self._known.get(name)
        if known is not None:
            return known[0]
        ref = self.static[name]
        return AdapterEntry(name, AdapterRef(name, ref), "")

    def _resolve(self, name: str) -> AdapterEntry:
        ref = self.static.get(name)
        if ref is not None and Path(ref).expanduser().is_dir():
            directory = Path(ref).expanduser()
            return AdapterEntry(name, AdapterRef(name, str(directory)), _declared_base(directory))
        try:
            parse_ref(ref or name)
        except InvalidArgument:
            raise NotFound(self._unknown(name)) from None
        registry = self._registry()
        try:
            version = registry.resolve(ref or name)
        except NotFound:
            if ref is not None:
                raise NotFound(
                    f"LoRA module {name!r} of deployment {self.deployment!r} names {ref!r}, "
                    "which the registry does not have"
                ) from None
            raise NotFound(self._unknown(name)) from None
        if version.format != ADAPTER_FORMAT:
            raise InvalidArgument(
                f"{version.ref} is a {version.format!r}, not a LoRA adapter ({ADAPTER_FORMAT!r}); "
                f"it cannot be served as an adapter of deployment {self.deployment!r}"
            )
        self._check_base(registry, name, version)
        return _entry(name, version)

    def _check_base(self, registry: RegistryClient, name: str, version: Version) -> None:
        base = self.base
        if base is None or not version.parents:
            return
        for parent in version.parents:
            if parent == base.key:
                return
            try:
                if registry.resolve(str(parent)).digest == base.digest:
                    return
            except NotFound:
                continue
        trained_on = " or ".join(str(p) for p in version.parents)
        raise InvalidArgument(
            f"adapter {name!r} ({version.ref}) was trained on {trained_on}, but deployment "
            f"{self.deployment!r} serves {base}; an adapter only runs on its own base model"
        )

    def _unknown(self, name: str) -> str:
        return (
            f"{name!r} is neither a LoRA module of deployment {self.deployment!r} nor a registry "
            f"adapter (format {ADAPTER_FORMAT!r})"
        )


def _entry(name: str, version: Version) -> AdapterEntry:
    base = ", ".join(str(p) for p in version.parents)
    return AdapterEntry(name, AdapterRef(version.ref, version.ref), base)


def _declared_base(directory: Path) -> str:
    """The base model a PEFT directory names in its adapter_config.json ("" if none)."""
    try:
        config = json.loads((directory / "adapter_config.json").read_text())
        return str(config.get("base_model_name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        return ""
