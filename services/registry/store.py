"""Registry metadata: every rule that needs a transaction lives here.

Each public method is one transaction. Writers lock the rows they decide on
(SELECT ... FOR UPDATE on PostgreSQL; SQLite writers hold the database lock
from BEGIN IMMEDIATE), always in the order model -> version -> alias, so the
checks they make (a draft is still a draft, no alias points at a version) hold
until they commit. Arguments arrive validated by `core.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cairn.common.db import WRITE_OPTION
from cairn.common.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable

from .paths import conflicting_path
from .records import (
    Alias,
    Artifact,
    Lineage,
    LineageEdge,
    Model,
    Version,
    VersionKey,
    VersionState,
    version_digest,
)
from .refs import Ref
from .schema import aliases, artifacts, create_engine, models, version_parents, versions

T = TypeVar("T")

_WRITE_ATTEMPTS = 4

_latest_ready = (
    sa.select(sa.func.max(versions.c.number))
    .where(versions.c.model_id == models.c.id, versions.c.state == VersionState.READY.value)
    .correlate(models)
    .scalar_subquery()
)
_model_columns = (*models.c, sa.func.coalesce(_latest_ready, 0).label("latest_version"))
_version_columns = (*versions.c, models.c.name.label("model_name"))


def _now() -> datetime:
    return datetime.now(timezone.utc)


class MetadataStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = create_engine(url)
        self._dialect = self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    # ---- models

    def create_model(self, name: str, description: str, labels: dict[str, str]) -> Model:
        def run(conn: sa.Connection) -> Model:
            try:
                conn.execute(models.insert().values(**_new_model(name, description, labels)))
            except sa.exc.IntegrityError:
                raise AlreadyExists(
                    f"model {name!r} already exists; push a new version to it instead (CreateVersion)"
                ) from None
            return self._models(conn, [self._model_row(conn, name)])[0]

        return self._write(run, retry_integrity=False)

    def get_model(self, name: str) -> Model:
        return self._read(lambda conn: self._models(conn, [self._model_row(conn, name)])[0])

    def list_models(self, limit: int, after_id: int | None, prefix: str) -> tuple[list[Model], int | None]:
        """Newest first; returns the page and the key to continue after (None on the last page)."""

        def run(conn: sa.Connection) -> tuple[list[Model], int | None]:
            query = sa.select(*_model_columns).order_by(models.c.id.desc()).limit(limit + 1)
            if after_id is not None:
                query = query.where(models.c.id < after_id)
            if prefix:
                # substr, not LIKE: SQLite's LIKE ignores case, and names are case-sensitive.
                query = query.where(sa.func.substr(models.c.name, 1, len(prefix)) == prefix)
            rows = conn.execute(query).all()
            more = len(rows) > limit
            rows = rows[:limit]
            return self._models(conn, rows), (rows[-1].id if more else None)

        return self._read(run)

    # ---- versions

    def create_version(
        self,
        model: str,
        *,
        create_model: bool,
        format: str,
        parents: Sequence[Ref],
        recipe: dict[str, Any],
        description: str,
        labels: dict[str, str],
    ) -> Version:
        def run(conn: sa.Connection) -> Version:
            # The model row doubles as the version counter; its lock serializes numbering per model.
            locked = (
                sa.select(models.c.id, models.c.next_version).where(models.c.name == model).with_for_update()
            )
            row = conn.execute(locked).one_or_none()
            if row is None and create_model:
                # In this transaction, so a draft that fails (a bad parent) leaves no empty model behind.
                self._insert_ignore(conn, models, _new_model(model, "", {}))
                row = conn.execute(locked).one_or_none()
            if row is None:
                raise NotFound(_unknown_model(model) + "; create it first or set create_model")
            parent_rows = [self._parent_row(conn, ref) for ref in parents]
            number = row.next_version
            conn.execute(models.update().where(models.c.id == row.id).values(next_version=number + 1))
            version_id = conn.execute(
                versions.insert().values(
                    model_id=row.id,
                    number=number,
                    state=VersionState.DRAFT.value,
                    format=format,
                    description=description,
                    labels=labels,
                    recipe=recipe,
                    digest="",
                    total_size=0,
                    created_at=_now(),
                )
            ).inserted_primary_key[0]
            unique_parents = list(dict.fromkeys(p.id for p in parent_rows))
            if unique_parents:
                conn.execute(
                    version_parents.insert(),
                    [
                        {"child_id": version_id, "parent_id": pid, "position": i}
                        for i, pid in enumerate(unique_parents)
                    ],
                )
            return self._versions(conn, self._version_rows(conn, [version_id]))[0]

        return self._write(run)

    def check_upload(self, model: str, number: int, path: str) -> None:
        """Fail fast, before any bytes arrive, when an upload could not be recorded."""

        def run(conn: sa.Connection) -> None:
            row = self._version_row(conn, model, number)
            _require_draft(row, "upload to")
            self._check_no_conflict(conn, row, path)

        self._read(run)

    def put_artifact(self, model: str, number: int, artifact: Artifact) -> Artifact:
        """Record an uploaded (already stored and verified) artifact; replaces a draft's same path."""

        def run(conn: sa.Connection) -> Artifact:
            row = self._version_row(conn, model, number, lock=True)
            _require_draft(row, "upload to")
            self._check_no_conflict(conn, row, artifact.path)
            values = {
                "version_id": row.id,
                "path": artifact.path,
                "size": artifact.size,
                "sha256": artifact.sha256,
                "uploaded_at": _now(),
            }
            self._upsert(conn, artifacts, values, keys=("version_id", "path"))
            return artifact

        return self._write(run)

    def _check_no_conflict(self, conn: sa.Connection, row: sa.Row, path: str) -> None:
        existing = conn.execute(sa.select(artifacts.c.path).where(artifacts.c.version_id == row.id)).scalars()
        clash = conflicting_path(path, list(existing))
        if clash is not None:
            raise FailedPrecondition(
                f"artifact path {path!r} conflicts with {clash!r} already in {row.model_name}@{row.number}: "
                "one would have to be both a file and a directory"
            )

    def finalize_version(
        self,
        model: str,
        number: int,
        alias_names: Sequence[str],
        verify: Callable[[list[Artifact]], None],
    ) -> Version:
        """DRAFT -> READY with digest and aliases; `verify` checks the blobs before anything changes."""

        def run(conn: sa.Connection) -> Version:
            row = self._version_row(conn, model, number, lock=True)
            _require_draft(row, "finalize")
            files = [Artifact(a.path, a.size, a.sha256) for a in self._artifact_rows(conn, [row.id])]
            if not files:
                raise FailedPrecondition(
                    f"{model}@{number} has no artifacts; upload at least one before finalizing, "
                    "or delete the draft"
                )
            verify(files)
            now = _now()
            conn.execute(
                versions.update()
                .where(versions.c.id == row.id)
                .values(
                    state=VersionState.READY.value,
                    digest=version_digest(files),
                    total_size=sum(a.size for a in files),
                    finalized_at=now,
                )
            )
            for name in alias_names:
                self._point_alias(conn, row.model_id, name, row.id, now)
            return self._versions(conn, self._version_rows(conn, [row.id]))[0]

        return self._write(run)

    def resolve(self, ref: Ref) -> Version:
        """A READY version, as references see them."""

        def run(conn: sa.Connection) -> Version:
            row = self._resolve_row(conn, ref)
            _require_visible(row, ref)
            return self._versions(conn, [row])[0]

        return self._read(run)

    def list_versions(
        self, model: str, limit: int, after: int | None, *, include_drafts: bool, include_deleted: bool
    ) -> tuple[list[Version], int | None]:
        states = [VersionState.READY.value]
        states += [VersionState.DRAFT.value] if include_drafts else []
        states += [VersionState.DELETED.value] if include_deleted else []

        def run(conn: sa.Connection) -> tuple[list[Version], int | None]:
            model_id = self._model_row(conn, model).id
            query = (
                sa.select(*_version_columns)
                .join(models, models.c.id == versions.c.model_id)
                .where(versions.c.model_id == model_id, versions.c.state.in_(states))
                .order_by(versions.c.number.desc())
                .limit(limit + 1)
            )
            if after is not None:
                query = query.where(versions.c.number < after)
            rows = conn.execute(query).all()
            more = len(rows) > limit
            rows = rows[:limit]
            return self._versions(conn, rows), (rows[-1].number if more else None)

        return self._read(run)

    def delete_version(self, ref: Ref) -> Version:
        def run(conn: sa.Connection) -> Version:
            row = self._resolve_row(conn, ref, lock=True)
            if row.state == VersionState.DELETED.value:
                raise NotFound(
                    f"{row.model_name}@{row.number} was already deleted ({row.deleted_at:%Y-%m-%d %H:%M}Z)"
                )
            pointing = conn.execute(
                sa.select(aliases.c.name).where(aliases.c.version_id == row.id).order_by(aliases.c.name)
            ).scalars()
            names = list(pointing)
            if names:
                raise FailedPrecondition(
                    f"{row.model_name}@{row.number} is still the target of alias(es) {', '.join(names)}; "
                    "move or delete them first (SetAlias / DeleteAlias)"
                )
            conn.execute(
                versions.update()
                .where(versions.c.id == row.id)
                .values(state=VersionState.DELETED.value, deleted_at=_now())
            )
            return self._versions(conn, self._version_rows(conn, [row.id]))[0]

        return self._write(run)

    # ---- aliases

    def set_alias(self, model: str, name: str, number: int) -> Alias:
        def run(conn: sa.Connection) -> Alias:
            row = self._version_row(conn, model, number, lock=True)
            if row.state != VersionState.READY.value:
                raise FailedPrecondition(
                    f"alias {name!r} can only point at a READY version; {model}@{number} is "
                    f"{_state_words(row.state)}"
                )
            now = _now()
            self._point_alias(conn, row.model_id, name, row.id, now)
            return Alias(model, name, number, now)

        return self._write(run)

    def delete_alias(self, model: str, name: str) -> int:
        def run(conn: sa.Connection) -> int:
            model_id = self._model_row(conn, model).id
            number = conn.execute(
                sa.select(versions.c.number)
                .join(aliases, aliases.c.version_id == versions.c.id)
                .where(aliases.c.model_id == model_id, aliases.c.name == name)
            ).scalar_one_or_none()
            if number is None:
                raise NotFound(self._unknown_alias(conn, model, model_id, name))
            conn.execute(aliases.delete().where(aliases.c.model_id == model_id, aliases.c.name == name))
            return int(number)

        return self._write(run)

    # ---- lineage

    def lineage(self, ref: Ref, depth: int) -> Lineage:
        """Ancestors and descendants up to `depth` generations, nearest first; drafts are left out."""

        def run(conn: sa.Connection) -> Lineage:
            root = self._resolve_row(conn, ref)
            _require_visible(root, ref, allow_deleted=True)
            ancestor_ids = self._walk(conn, root.id, depth, up=True)
            descendant_ids = self._walk(conn, root.id, depth, up=False)
            ids = [root.id, *ancestor_ids, *descendant_ids]
            by_id = dict(zip(ids, self._versions(conn, self._version_rows(conn, ids)), strict=True))
            edge_rows = conn.execute(
                sa.select(version_parents.c.child_id, version_parents.c.parent_id)
                .where(version_parents.c.child_id.in_(ids), version_parents.c.parent_id.in_(ids))
                .order_by(version_parents.c.child_id, version_parents.c.position)
            ).all()
            return Lineage(
                root=by_id[root.id],
                ancestors=tuple(by_id[i] for i in ancestor_ids),
                descendants=tuple(by_id[i] for i in descendant_ids),
                edges=tuple(LineageEdge(by_id[c].key, by_id[p].key) for c, p in edge_rows),
            )

        return self._read(run)

    def _walk(self, conn: sa.Connection, start: int, depth: int, *, up: bool) -> list[int]:
        """Breadth-first over parent edges (`up`) or child edges; each id once.

        Nearest generation first; within one, by model name then number (sorted
        here, not in SQL, so the order does not depend on the database collation).
        """
        near, far = (version_parents.c.child_id, version_parents.c.parent_id)
        if not up:
            near, far = far, near
        seen, order, frontier = {start}, [], [start]
        for _ in range(depth):
            rows = conn.execute(
                sa.select(far.label("id"), models.c.name, versions.c.number)
                .join(versions, versions.c.id == far)
                .join(models, models.c.id == versions.c.model_id)
                .where(near.in_(frontier), versions.c.state != VersionState.DRAFT.value)
            ).all()
            ranked = sorted(
                {r.id: (r.name, r.number) for r in rows if r.id not in seen}.items(), key=lambda x: x[1]
            )
            frontier = [version_id for version_id, _ in ranked]
            if not frontier:
                break
            seen.update(frontier)
            order.extend(frontier)
        return order

    # ---- row helpers (all take the open connection)

    def _model_row(self, conn: sa.Connection, name: str) -> sa.Row:
        row = conn.execute(sa.select(*_model_columns).where(models.c.name == name)).one_or_none()
        if row is None:
            raise NotFound(_unknown_model(name))
        return row

    def _version_rows(self, conn: sa.Connection, ids: list[int]) -> list[sa.Row]:
        """Rows of `_version_columns` for `ids`, in that order."""
        rows = conn.execute(
            sa.select(*_version_columns)
            .join(models, models.c.id == versions.c.model_id)
            .where(versions.c.id.in_(ids))
        ).all()
        by_id = {r.id: r for r in rows}
        return [by_id[i] for i in ids]

    def _version_row(self, conn: sa.Connection, model: str, number: int, *, lock: bool = False) -> sa.Row:
        model_id = self._model_row(conn, model).id
        query = (
            sa.select(*_version_columns)
            .join(models, models.c.id == versions.c.model_id)
            .where(versions.c.model_id == model_id, versions.c.number == number)
        )
        row = conn.execute(query.with_for_update(of=versions) if lock else query).one_or_none()
        if row is None:
            raise NotFound(f"{model}@{number} does not exist; {self._latest_words(conn, model, model_id)}")
        return row

    def _resolve_row(self, conn: sa.Connection, ref: Ref, *, lock: bool = False) -> sa.Row:
        """The row a reference names, in whatever state; the caller decides what it accepts."""
        if ref.version is not None:
            return self._version_row(conn, ref.model, ref.version, lock=lock)
        model_id = self._model_row(conn, ref.model).id
        query = (
            sa.select(*_version_columns)
            .join(models, models.c.id == versions.c.model_id)
            .where(versions.c.model_id == model_id)
        )
        if ref.alias is not None:
            query = query.join(aliases, aliases.c.version_id == versions.c.id).where(
                aliases.c.model_id == model_id, aliases.c.name == ref.alias
            )
        else:
            query = (
                query.where(versions.c.state == VersionState.READY.value)
                .order_by(versions.c.number.desc())
                .limit(1)
            )
        row = conn.execute(query.with_for_update(of=versions) if lock else query).one_or_none()
        if row is None and ref.alias is not None:
            raise NotFound(self._unknown_alias(conn, ref.model, model_id, ref.alias))
        if row is None:
            raise NotFound(f"model {ref.model!r} has no READY version yet; push and finalize one first")
        return row

    def _parent_row(self, conn: sa.Connection, ref: Ref) -> sa.Row:
        try:
            row = self._resolve_row(conn, ref)
        except NotFound as e:
            raise NotFound(f"parent {ref}: {e.message}") from None
        if row.state != VersionState.READY.value:
            raise FailedPrecondition(
                f"parent {row.model_name}@{row.number} is {_state_words(row.state)}; "
                "a version can only derive from READY versions"
            )
        return row

    def _latest_words(self, conn: sa.Connection, model: str, model_id: int) -> str:
        highest = conn.execute(
            sa.select(sa.func.max(versions.c.number)).where(versions.c.model_id == model_id)
        ).scalar_one()
        return f"{model} has versions 1..{highest}" if highest else f"{model} has no versions yet"

    def _unknown_alias(self, conn: sa.Connection, model: str, model_id: int, name: str) -> str:
        defined = conn.execute(
            sa.select(aliases.c.name).where(aliases.c.model_id == model_id).order_by(aliases.c.name)
        ).scalars()
        names = ", ".join(defined) or "none"
        return f"alias {name!r} is not defined on model {model!r} (defined: {names})"

    def _artifact_rows(self, conn: sa.Connection, version_ids: list[int]) -> list[sa.Row]:
        return list(
            conn.execute(
                sa.select(artifacts)
                .where(artifacts.c.version_id.in_(version_ids))
                .order_by(artifacts.c.version_id, artifacts.c.path)
            )
        )

    def _models(self, conn: sa.Connection, rows: Sequence[sa.Row]) -> list[Model]:
        ids = [r.id for r in rows]
        alias_rows = conn.execute(
            sa.select(aliases.c.model_id, aliases.c.name, aliases.c.updated_at, versions.c.number)
            .join(versions, versions.c.id == aliases.c.version_id)
            .where(aliases.c.model_id.in_(ids))
            .order_by(aliases.c.name)
        ).all()
        names = {r.id: r.name for r in rows}
        by_model: dict[int, list[Alias]] = {i: [] for i in ids}
        for a in alias_rows:
            by_model[a.model_id].append(Alias(names[a.model_id], a.name, a.number, a.updated_at))
        return [
            Model(
                name=r.name,
                description=r.description,
                labels=dict(r.labels),
                created_at=r.created_at,
                latest_version=int(r.latest_version),
                aliases=tuple(by_model[r.id]),
            )
            for r in rows
        ]

    def _versions(self, conn: sa.Connection, rows: Sequence[sa.Row]) -> list[Version]:
        """Whole Version records for rows of `_version_columns`, three queries for any number of rows."""
        ids = [r.id for r in rows]
        files: dict[int, list[Artifact]] = {i: [] for i in ids}
        for a in self._artifact_rows(conn, ids):
            files[a.version_id].append(Artifact(a.path, a.size, a.sha256))
        parent = versions.alias("parent")
        parent_model = models.alias("parent_model")
        parents: dict[int, list[VersionKey]] = {i: [] for i in ids}
        for p in conn.execute(
            sa.select(version_parents.c.child_id, parent_model.c.name, parent.c.number)
            .join(parent, parent.c.id == version_parents.c.parent_id)
            .join(parent_model, parent_model.c.id == parent.c.model_id)
            .where(version_parents.c.child_id.in_(ids))
            .order_by(version_parents.c.child_id, version_parents.c.position)
        ):
            parents[p.child_id].append(VersionKey(p.name, int(p.number)))
        alias_names: dict[int, list[str]] = {i: [] for i in ids}
        for a in conn.execute(
            sa.select(aliases.c.version_id, aliases.c.name)
            .where(aliases.c.version_id.in_(ids))
            .order_by(aliases.c.name)
        ):
            alias_names[a.version_id].append(a.name)
        return [
            Version(
                model=r.model_name,
                number=int(r.number),
                state=VersionState(r.state),
                format=r.format,
                created_at=r.created_at,
                artifacts=tuple(files[r.id]),
                parents=tuple(parents[r.id]),
                recipe=dict(r.recipe),
                description=r.description,
                labels=dict(r.labels),
                aliases=tuple(alias_names[r.id]),
                digest=r.digest,
                total_size=int(r.total_size),
                finalized_at=r.finalized_at,
                deleted_at=r.deleted_at,
            )
            for r in rows
        ]

    def _point_alias(
        self, conn: sa.Connection, model_id: int, name: str, version_id: int, now: datetime
    ) -> None:
        values = {"model_id": model_id, "name": name, "version_id": version_id, "updated_at": now}
        self._upsert(conn, aliases, values, keys=("model_id", "name"))

    def _dialect_insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)

    def _upsert(
        self, conn: sa.Connection, table: sa.Table, values: dict[str, Any], keys: tuple[str, ...]
    ) -> None:
        statement = self._dialect_insert(table).values(**values)
        update = {k: v for k, v in values.items() if k not in keys}
        conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=update))

    def _insert_ignore(self, conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> None:
        conn.execute(self._dialect_insert(table).values(**values).on_conflict_do_nothing())

    # ---- transactions

    def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        with self._connection(write=False) as conn:
            return fn(conn)

    def _write(self, fn: Callable[[sa.Connection], T], *, retry_integrity: bool = True) -> T:
        """Run `fn` in a write transaction, retrying races the database reports as transient.

        A unique-constraint violation can only come from a concurrent writer that
        got in first (the locks make it rare; the constraint makes it safe), so the
        whole transaction is replayed and re-decides on the state it then sees.
        """
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._connection(write=True) as conn:
                    return fn(conn)
            except sa.exc.IntegrityError:
                if not retry_integrity or attempt == _WRITE_ATTEMPTS - 1:
                    raise
            except sa.exc.OperationalError as e:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise Unavailable(f"registry database busy or unreachable: {e.orig}; retry") from e
            time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[sa.Connection]:
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as e:
            if write:
                raise
            raise Unavailable(f"registry database unreachable: {e.orig}; retry") from e
        except sa.exc.TimeoutError as e:
            raise Unavailable(f"registry database connections are all busy ({e}); retry") from e


def _new_model(name: str, description: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "labels": labels,
        "created_at": _now(),
        "next_version": 1,
    }


def _unknown_model(name: str) -> str:
    return f"model {name!r} not found"


def _state_words(state: str) -> str:
    return {"draft": "a draft (not finalized)", "ready": "READY", "deleted": "deleted"}[state]


def _require_draft(row: sa.Row, action: str) -> None:
    if row.state == VersionState.READY.value:
        raise FailedPrecondition(
            f"cannot {action} {row.model_name}@{row.number}: it is finalized and immutable; "
            "create a new version instead"
        )
    if row.state == VersionState.DELETED.value:
        raise FailedPrecondition(f"cannot {action} {row.model_name}@{row.number}: it was deleted")


def _require_visible(row: sa.Row, ref: Ref, *, allow_deleted: bool = False) -> None:
    if row.state == VersionState.DRAFT.value:
        raise NotFound(f"{row.model_name}@{row.number} ({ref}) is a draft; it becomes visible once finalized")
    if row.state == VersionState.DELETED.value and not allow_deleted:
        raise NotFound(f"{row.model_name}@{row.number} ({ref}) was deleted")
