"""Model name -> deployment -> scheduler replica.

Every deployment is a list of scheduler replicas serving one model. The
table asks each replica what it serves (GetInfo) at start and every
`refresh_interval_s`, so replicas that come up late, restart or go away are
noticed without a restart of the router. A name no deployment lists may be
a LoRA adapter published since: each deployment is asked to resolve it
(GetInfo with `adapter`), and the one whose base model it was trained on
takes it; if it belongs to a base model no deployment serves, the request
is refused with INVALID_ARGUMENT saying so. A request goes to the replica that
holds its prompt's prefix (see `prefix_affinity`) unless that one is more
than `max_imbalance` requests busier than the least loaded replica, else to
the least loaded; load is the requests this router has in flight there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from cairn.common.channel import make_channel
from cairn.common.errors import InvalidArgument, NotFound, Unavailable
from cairn.v1 import scheduler_pb2, scheduler_pb2_grpc

from .prefix_affinity import PrefixAffinity, prompt_block_hashes

logger = logging.getLogger("cairn.router.routing")

INFO_TIMEOUT_S = 3.0
# A replica that failed a call sits out this long before requests try it again.
DOWN_COOLDOWN_S = 2.0


@dataclass(frozen=True)
class DeploymentInfo:
    """What a scheduler replica says it serves."""

    model: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    block_size: int
    # adapter name -> its source
    adapters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, info: scheduler_pb2.SchedulerInfo) -> DeploymentInfo:
        return cls(
            model=info.model,
            max_model_len=info.max_model_len,
            vocab_size=info.vocab_size,
            eos_token_ids=tuple(info.eos_token_ids),
            block_size=info.block_size,
            adapters={a.name: a.source for a in info.adapters},
        )


class Replica:
    def __init__(self, deployment: str, address: str, channel: grpc.aio.Channel) -> None:
        self.deployment = deployment
        self.address = address
        self.channel = channel
        self.stub = scheduler_pb2_grpc.SchedulerStub(channel)
        self.info: DeploymentInfo | None = None
        self.inflight = 0
        self.assigned = 0
        self.down_until = 0.0
        self.last_error = "not contacted yet"

    @property
    def ready(self) -> bool:
        return self.info is not None and time.monotonic() >= self.down_until

    def __repr__(self) -> str:
        return f"Replica({self.deployment}@{self.address}, inflight={self.inflight})"


@dataclass(frozen=True)
class ServedModel:
    id: str
    source: str
    # The deployment an adapter runs on ("" for a deployment's own model).
    base_model: str
    max_model_len: int
    created: int


@dataclass(frozen=True)
class Target:
    """Where a request for one model name goes: a deployment, and an adapter of it or the base model."""

    name: str
    deployment: str
    adapter: str
    info: DeploymentInfo
    replicas: tuple[Replica, ...]
    # Adapters keep their base model's tokenizer.
    tokenizer_model: str


class RoutingTable:
    def __init__(
        self,
        deployments: Mapping[str, Sequence[str]],
        *,
        affinity_capacity: int = 200_000,
        max_imbalance: int = 8,
        refresh_interval_s: float = 5.0,
        tokenizers: Mapping[str, str] | None = None,
        channel_factory: Callable[[str], grpc.aio.Channel] = make_channel,
    ) -> None:
        self._replicas = {
            name: [Replica(name, address, channel_factory(address)) for address in addresses]
            for name, addresses in deployments.items()
        }
        self._tokenizers = dict(tokenizers or {})
        self._created: dict[str, int] = {}
        self._affinity = PrefixAffinity(affinity_capacity)
        self.max_imbalance = max_imbalance
        self.refresh_interval_s = refresh_interval_s
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0

    @property
    def replicas(self) -> list[Replica]:
        return [r for replicas in self._replicas.values() for r in replicas]

    async def start(self) -> None:
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="router-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await asyncio.gather(*(r.channel.close() for r in self.replicas))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Ask every replica what it serves; unreachable ones are taken out of rotation."""
        async with self._refresh_lock:
            await asyncio.gather(*(self._probe(r) for r in self.replicas))
            self._last_refresh = time.monotonic()
        now = int(time.time())
        for name, replicas in self._replicas.items():
            if any(r.info is not None for r in replicas):
                self._created.setdefault(name, now)

    async def _probe(self, replica: Replica) -> None:
        try:
            info = await replica.stub.GetInfo(scheduler_pb2.SchedulerInfoRequest(), timeout=INFO_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if replica.info is not None:
                logger.warning("scheduler %s is unreachable: %s", replica.address, e.details())
            replica.info = None
            replica.last_error = f"{e.code().name}: {e.details()}"
            return
        if replica.info is None:
            logger.info("scheduler %s serves %s (%s)", replica.address, replica.deployment, info.model)
        replica.info = DeploymentInfo.from_proto(info)
        replica.down_until = 0.0

    def mark_down(self, replica: Replica, reason: str) -> None:
        """Keep requests off a replica that just failed until the cooldown passes."""
        replica.down_until = time.monotonic() + DOWN_COOLDOWN_S
        replica.last_error = reason
        logger.warning("scheduler %s failed a call, out of rotation: %s", replica.address, reason)

    def served_names(self) -> list[str]:
        names = list(self._replicas)
        for replicas in self._replicas.values():
            info = _info_of(replicas)
            if info is not None:
                names.extend(a for a in info.adapters if a not in names)
        return names

    def served_models(self) -> list[ServedModel]:
        models = []
        for name, replicas in self._replicas.items():
            info = _info_of(replicas)
            if info is None:
                continue
            created = self._created.get(name, 0)
            models.append(ServedModel(name, info.model, "", info.max_model_len, created))
            for adapter, source in info.adapters.items():
                models.append(ServedModel(adapter, source, name, info.max_model_len, created))
        return models

    def readiness(self) -> dict[str, tuple[int, int]]:
        """Per deployment: (replicas ready, replicas configured)."""
        return {name: (sum(r.ready for r in rs), len(rs)) for name, rs in self._replicas.items()}

    async def resolve(self, model: str) -> Target:
        """The target for a model name; NotFound listing the served names, Unavailable if none is up."""
        target = self.find(model)
        if target is None or not any(r.ready for r in target.replicas):
            # A replica may have come up since the last refresh (startup, restart): look now.
            if time.monotonic() - self._last_refresh > 1.0:
                await self.refresh()
            target = self.find(model)
        if target is None:
            target = await self._discover(model)
        if target is None:
            available = ", ".join(sorted(self.served_names())) or "none"
            raise NotFound(f"model {model!r} is not served here; available models: {available}")
        if not any(r.ready for r in target.replicas):
            errors = "; ".join(f"{r.address}: {r.last_error}" for r in target.replicas)
            raise Unavailable(f"no scheduler of {target.deployment!r} is reachable ({errors}); retry later")
        return target

    async def _discover(self, model: str) -> Target | None:
        """Asks every deployment to resolve `model` as one of its adapters; the target of the
        one that can serve it, None if none knows it. InvalidArgument when it is an adapter
        of a base model no deployment here serves."""
        replicas = [r for r in self.replicas if r.ready]
        replies = await asyncio.gather(*(self._ask_adapter(r, model) for r in replicas))
        refused = []
        for replica, reply in zip(replicas, replies, strict=True):
            if isinstance(reply, scheduler_pb2.SchedulerInfo):
                replica.info = DeploymentInfo.from_proto(reply)
            elif reply is not None:
                refused.append(f"{replica.deployment}: {reply}")
        target = self.find(model)
        if target is None and refused:
            reasons = "; ".join(dict.fromkeys(refused))
            raise InvalidArgument(f"model {model!r} cannot be served here: {reasons}")
        return target

    async def _ask_adapter(self, replica: Replica, adapter: str) -> scheduler_pb2.SchedulerInfo | str | None:
        """The replica's info once it resolved `adapter`, the reason it refuses it
        (INVALID_ARGUMENT), or None when it does not know the name or cannot be asked."""
        request = scheduler_pb2.SchedulerInfoRequest(adapter=adapter)
        try:
            return await replica.stub.GetInfo(request, timeout=INFO_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return e.details()
            if e.code() != grpc.StatusCode.NOT_FOUND:
                logger.warning("scheduler %s could not resolve %r: %s", replica.address, adapter, e.details())
            return None

    def find(self, model: str) -> Target | None:
        """The target of a model name as the table knows it now (no refresh), or None."""
        for name, replicas in self._replicas.items():
            info = _info_of(replicas)
            if model == name or (info is not None and model == info.model):
                adapter = ""
            elif info is not None and model in info.adapters:
                adapter = model
            else:
                continue
            info = info or _UNKNOWN_INFO
            tokenizer = self._tokenizers.get(name) or info.model
            return Target(model, name, adapter, info, tuple(replicas), tokenizer)
        return None

    def choose(self, target: Target, prompt_ids: Sequence[int], exclude: Sequence[Replica] = ()) -> Replica:
        """The replica for this prompt: prefix affinity within `max_imbalance`, else least loaded."""
        candidates = [r for r in target.replicas if r.ready and r not in exclude]
        if not candidates:
            raise Unavailable(f"no scheduler of {target.deployment!r} is reachable; retry later")
        least = min(candidates, key=lambda r: (r.inflight, r.assigned))
        hashes = prompt_block_hashes(prompt_ids, target.info.block_size, target.adapter or None)
        owner, _ = self._affinity.lookup(hashes)
        chosen = least
        if owner is not None:
            preferred = next((r for r in candidates if r.address == owner), None)
            if preferred is not None and preferred.inflight <= least.inflight + self.max_imbalance:
                chosen = preferred
        self._affinity.record(hashes, chosen.address)
        chosen.assigned += 1
        return chosen

    @contextlib.contextmanager
    def lease(self, replica: Replica) -> Iterator[None]:
        """Count a request against `replica`'s load while it runs there."""
        replica.inflight += 1
        try:
            yield
        finally:
            replica.inflight -= 1


_UNKNOWN_INFO = DeploymentInfo(model="", max_model_len=0, vocab_size=0, eos_token_ids=(), block_size=1)


def _info_of(replicas: Sequence[Replica]) -> DeploymentInfo | None:
    """What the deployment serves, as a ready replica (else any that answered once) says."""
    ready = next((r.info for r in replicas if r.ready), None)
    return ready or next((r.info for r in replicas if r.info is not None), None)
