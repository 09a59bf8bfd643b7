"""`cairn registry ...`: run the registry, push and pull model directories, list, alias, show, remove."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cairn.common.cli import ClientCommands
from cairn.common.config import ConfigError, add_config_arguments, config_from_args
from cairn.common.errors import InvalidArgument

from .config import RegistryConfig
from .records import Lineage, Version

PROG = "cairn registry"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="model registry: serve, push, pull, ls, alias, show, rm",
        description="Models -> versions -> artifacts, with aliases and lineage. Client commands talk to "
        "the registry at --registry, else $CAIRN_REGISTRY, else 127.0.0.1:50055.",
    )
    sub = parser.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the registry service")
    add_config_arguments(serve, RegistryConfig)
    serve.set_defaults(func=_serve)

    push = _CLIENT.add(sub, "push", "push a directory as a new version", _push)
    push.add_argument("dir", type=Path, help="directory to push (every file under it)")
    push.add_argument("--name", required=True, help='model name, e.g. "acme/llama-3.1-8b" (created if new)')
    push.add_argument(
        "--alias", action="append", default=[], help="alias to point at the new version (repeat)"
    )
    push.add_argument("--format", default="hf-model", help="hf-model, peft-adapter, compressed-tensors, ...")
    push.add_argument(
        "--parent", action="append", default=[], help="version it derives from (repeat), e.g. base@3"
    )
    push.add_argument("--recipe", help="how it was made: a JSON object, or @FILE holding one")
    push.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeat)")
    push.add_argument("--description", default="")

    pull = _CLIENT.add(sub, "pull", "download a version into a directory (checksums verified)", _pull)
    pull.add_argument("ref", help='reference: "name", "name@3", "name@production"')
    pull.add_argument("dir", type=Path, help="destination directory")

    ls = _CLIENT.add(sub, "ls", "list models, or the versions of one model", _ls)
    ls.add_argument("name", nargs="?", help="list this model's versions instead of all models")
    ls.add_argument("--prefix", default="", help="only models whose name starts with this")
    ls.add_argument("--drafts", action="store_true", help="include drafts (with NAME)")
    ls.add_argument("--deleted", action="store_true", help="include deleted versions (with NAME)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    alias = _CLIENT.add(sub, "alias", "point an alias at a version, or delete it", _alias)
    alias.add_argument("name", help="model name")
    alias.add_argument("alias", help='alias, e.g. "production"')
    alias.add_argument("version", nargs="?", type=int, help="version number to point at")
    alias.add_argument("--delete", action="store_true", help="remove the alias instead")

    show = _CLIENT.add(sub, "show", "show a version with its artifacts and lineage", _show)
    show.add_argument("ref", help='reference: "name", "name@3", "name@production"')
    show.add_argument("--depth", type=int, default=0, help="lineage generations each way (default 5)")
    show.add_argument("--json", action="store_true", help="print JSON")

    rm = _CLIENT.add(sub, "rm", "soft-delete a version (refused while an alias points at it)", _rm)
    rm.add_argument("ref", help='version by number or alias, e.g. "name@3"')


def _connect(address: str | None) -> Any:
    from cairn.services.registry.client import RegistryClient

    return RegistryClient(address)


_CLIENT = ClientCommands(PROG, "registry", "--registry", "CAIRN_REGISTRY", "127.0.0.1:50055", _connect)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(RegistryConfig, args)
    except ConfigError as e:
        print(f"{PROG} serve: {e}", file=sys.stderr)
        return 2
    from .server import serve

    return serve(config)


def _push(client: Any, args: argparse.Namespace) -> int:
    from .client import local_files

    total = sum(path.stat().st_size for _, path in local_files(args.dir))
    with _progress(total, f"push {args.name}") as progress:
        version = client.push_dir(
            args.dir,
            args.name,
            format=args.format,
            parents=args.parent,
            recipe=_recipe(args.recipe),
            aliases=args.alias,
            description=args.description,
            labels=_labels(args.label),
            progress=progress,
        )
    aliases = f", aliases: {', '.join(version.aliases)}" if version.aliases else ""
    print(
        f"pushed {version.ref} ({len(version.artifacts)} files, {_size(version.total_size)}, "
        f"digest {version.digest[:12]}{aliases})"
    )
    return 0


def _pull(client: Any, args: argparse.Namespace) -> int:
    version = client.resolve(args.ref)
    with _progress(version.total_size, f"pull {version.ref}") as progress:
        client.pull(version.ref, args.dir, progress=progress)
    print(
        f"pulled {version.ref} ({len(version.artifacts)} files, {_size(version.total_size)}) into {args.dir}"
    )
    return 0


def _ls(client: Any, args: argparse.Namespace) -> int:
    if args.name is None:
        models = client.list_models(args.prefix)
        if args.json:
            _print_json_lines(models)
            return 0
        _table(
            ("NAME", "LATEST", "ALIASES", "CREATED", "DESCRIPTION"),
            [
                (
                    m.name,
                    m.latest_version or "-",
                    _aliases_of(m),
                    f"{m.created_at:%Y-%m-%d %H:%M}",
                    m.description,
                )
                for m in models
            ],
        )
        return 0
    versions = client.list_versions(args.name, include_drafts=args.drafts, include_deleted=args.deleted)
    if args.json:
        _print_json_lines(versions)
        return 0
    _table(
        ("VERSION", "STATE", "FORMAT", "SIZE", "ALIASES", "CREATED", "PARENTS"),
        [
            (
                v.number,
                v.state.value,
                v.format,
                _size(v.total_size),
                ",".join(v.aliases),
                f"{v.created_at:%Y-%m-%d %H:%M}",
                ",".join(str(p) for p in v.parents),
            )
            for v in versions
        ],
    )
    return 0


def _alias(client: Any, args: argparse.Namespace) -> int:
    if args.delete:
        if args.version is not None:
            raise InvalidArgument("--delete takes no VERSION")
        number = client.delete_alias(args.name, args.alias)
        print(f"deleted alias {args.name}@{args.alias} (was version {number})")
        return 0
    if args.version is None:
        raise InvalidArgument("give the VERSION number to point the alias at, or --delete")
    alias = client.set_alias(args.name, args.alias, args.version)
    print(f"{alias.model}@{alias.alias} -> {alias.model}@{alias.version}")
    return 0


def _show(client: Any, args: argparse.Namespace) -> int:
    lineage = client.show(args.ref, depth=args.depth)
    if args.json:
        print(json.dumps(_jsonable(lineage), indent=2))
        return 0
    print("\n".join(describe(lineage)))
    return 0


def _rm(client: Any, args: argparse.Namespace) -> int:
    version = client.delete(args.ref)
    print(f"deleted {version.ref}")
    return 0


def describe(lineage: Lineage) -> list[str]:
    """Human-readable lines for a version and its lineage."""
    v = lineage.root
    lines = [
        f"{v.ref}  [{v.state.value}]  format {v.format}",
        f"  digest     {v.digest or '-'}",
        f"  size       {_size(v.total_size)} in {len(v.artifacts)} files",
        f"  created    {v.created_at:%Y-%m-%d %H:%M:%S}Z",
    ]
    if v.finalized_at:
        lines.append(f"  finalized  {v.finalized_at:%Y-%m-%d %H:%M:%S}Z")
    if v.deleted_at:
        lines.append(f"  deleted    {v.deleted_at:%Y-%m-%d %H:%M:%S}Z")
    if v.aliases:
        lines.append(f"  aliases    {', '.join(v.aliases)}")
    if v.description:
        lines.append(f"  description {v.description}")
    lines += [f"  label      {k}={val}" for k, val in sorted(v.labels.items())]
    if v.recipe:
        lines.append(f"  recipe     {json.dumps(v.recipe, sort_keys=True)}")
    lines.append("  artifacts")
    lines += [f"    {a.sha256[:12]}  {_size(a.size):>10}  {a.path}" for a in v.artifacts]
    lines.append("  lineage")
    lines += [f"    parent     {p}" for p in v.parents] or ["    parent     (none)"]
    lines += [f"    ancestor   {_lineage_entry(a)}" for a in lineage.ancestors]
    lines += [f"    descendant {_lineage_entry(d)}" for d in lineage.descendants]
    return lines


def _lineage_entry(version: Version) -> str:
    parents = ", ".join(str(p) for p in version.parents)
    state = f" [{version.state.value}]" if version.state.value != "ready" else ""
    return f"{version.ref} ({version.format}){state}" + (f" <- {parents}" if parents else "")


def _aliases_of(model: Any) -> str:
    return ",".join(f"{a.alias}={a.version}" for a in model.aliases)


def _recipe(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    source = "--recipe"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise InvalidArgument(f"cannot read the recipe file {source}: {e.strerror}") from None
    try:
        recipe = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{source} is not JSON: {e}") from None
    if not isinstance(recipe, dict):
        raise InvalidArgument(f"{source} must be a JSON object, got {type(recipe).__name__}")
    return recipe


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidArgument(f"--label {pair!r} must be KEY=VALUE")
        labels[key] = value
    return labels


@contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr (only on a terminal; tqdm disables itself otherwise)."""
    from tqdm import tqdm

    with tqdm(
        total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, disable=None, leave=False
    ) as bar:
        yield bar.update


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple(str(c) for c in header), *(tuple(str(c) for c in row) for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(asdict(value), default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__}")


def _print_json_lines(items: Iterator[Any]) -> None:
    for item in items:
        print(json.dumps(_jsonable(item)))
