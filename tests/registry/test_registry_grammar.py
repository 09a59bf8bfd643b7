"""Reference, name, alias, artifact-path and page-token rules, called directly (no server, no database)."""

from __future__ import annotations

import ntpath
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.common.errors import InvalidArgument
from cairn.common.pagination import decode_token, effective_page_size, encode_token
from cairn.services.registry.paths import check_artifact_path, conflicting_path
from cairn.services.registry.records import Artifact, version_digest
from cairn.services.registry.refs import (
    Ref,
    check_alias_name,
    check_model_name,
    check_name_prefix,
    parse_ref,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llama", Ref("llama")),
        ("llama@latest", Ref("llama")),
        ("llama@3", Ref("llama", version=3)),
        ("llama@production", Ref("llama", alias="production")),
        ("acme/llama-3.1-8b@staging", Ref("acme/llama-3.1-8b", alias="staging")),
        ("Qwen2.5_0.5B@4294967295", Ref("Qwen2.5_0.5B", version=4294967295)),
        ("7b@v1.2-rc_3", Ref("7b", alias="v1.2-rc_3")),
    ],
)
def test_valid_references_parse(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@3",
        "llama@",
        "llama@0",
        "llama@03",
        "llama@-1",
        "llama@4294967296",
        "llama@@3",
        "llama@3@4",
        "llama@1abc",
        "llama@Latest",
        "llama@_prod",
        "org/team/llama",
        "/llama",
        "llama/",
        "-llama",
        ".llama",
        "org/.hidden",
        "lla ma",
        "llama\x00",
        "ll\\ama",
        "x" * 129,
        "llama@" + "a" * 65,
    ],
)
def test_malformed_references_quote_the_grammar(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_ref(text)
    assert "a reference is" in err.value.message
    assert '"name@<alias>"' in err.value.message


def test_name_length_limit_is_exact() -> None:
    assert check_model_name("a" * 128) == "a" * 128
    with pytest.raises(InvalidArgument, match="malformed"):
        check_model_name("a" * 129)


@pytest.mark.parametrize("alias", ["latest", "LATEST", "Latest", "3", "1a", "-x", "a b", "", "a" * 65, "a/b"])
def test_bad_alias_names(alias: str) -> None:
    with pytest.raises(InvalidArgument, match="alias"):
        check_alias_name(alias)


def test_name_prefix_may_be_partial_but_not_foreign() -> None:
    assert check_name_prefix("acme/") == "acme/"
    assert check_name_prefix("") == ""
    with pytest.raises(InvalidArgument, match="cannot match any model"):
        check_name_prefix("acme%")


_segment = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
_names = st.one_of(_segment, st.builds(lambda a, b: f"{a}/{b}", _segment, _segment))
_aliases = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda a: a.lower() != "latest"
)


@given(name=_names, selector=st.one_of(st.none(), st.integers(1, 2**32 - 1), _aliases))
def test_str_of_a_ref_parses_back_to_itself(name: str, selector: int | str | None) -> None:
    text = name if selector is None else f"{name}@{selector}"
    ref = parse_ref(text)
    assert ref.model == name
    assert parse_ref(str(ref)) == ref


@given(st.text(max_size=40))
def test_parse_ref_never_fails_other_than_invalid_argument(text: str) -> None:
    try:
        ref = parse_ref(text)
    except InvalidArgument:
        return
    assert check_model_name(ref.model) == ref.model


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "a/../../b",
        "a/..",
        "..",
        ".",
        "./a",
        "/abs",
        "a//b",
        "a/",
        "a\\b",
        "..\\..\\windows",
        "a\x00b",
        "a\nb",
        "C:/windows",
        "c:evil",
        "",
        "x" * 1025,
    ],
)
def test_escaping_artifact_paths_are_rejected(path: str) -> None:
    with pytest.raises(InvalidArgument, match="artifact path"):
        check_artifact_path(path)


@pytest.mark.parametrize(
    "path", ["config.json", "adapter/adapter_model.safetensors", ".gitattributes", "a..b/c", "dir.d/x y.bin"]
)
def test_ordinary_artifact_paths_are_accepted(path: str) -> None:
    assert check_artifact_path(path) == path


_path_pieces = st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "C:", "\x00", " "])


@given(st.lists(_path_pieces, max_size=12).map("".join))
def test_accepted_paths_stay_inside_the_version_on_posix_and_windows(path: str) -> None:
    try:
        check_artifact_path(path)
    except InvalidArgument:
        return
    assert posixpath.normpath(posixpath.join("/root/v", path)).startswith("/root/v/")
    assert ntpath.normpath(ntpath.join("C:\\root\\v", path)).startswith("C:\\root\\v\\")


def test_file_and_directory_of_the_same_name_conflict() -> None:
    assert conflicting_path("a/b", ["a"]) == "a"
    assert conflicting_path("a", ["a/b/c"]) == "a/b/c"
    assert conflicting_path("ab", ["a", "a/c"]) is None
    assert conflicting_path("a", ["a"]) is None


def test_page_tokens_round_trip_and_refuse_other_queries() -> None:
    query = {"list": "versions", "model": "m"}
    token = encode_token(query, 17)
    assert decode_token(token, query) == 17
    assert decode_token("", query) is None
    with pytest.raises(InvalidArgument, match="different query"):
        decode_token(token, {"list": "versions", "model": "other"})
    for garbage in ["%%%", "bm90IGpzb24", token[:-3], "W10"]:
        with pytest.raises(InvalidArgument, match="page_token"):
            decode_token(garbage, query)


def test_page_size_defaults_caps_and_refuses_negatives() -> None:
    assert effective_page_size(0) == 50
    assert effective_page_size(7) == 7
    assert effective_page_size(10_000) == 500
    with pytest.raises(InvalidArgument, match="page_size"):
        effective_page_size(-1)


def test_version_digest_is_the_sha256_of_a_sorted_sha256sum_manifest() -> None:
    import hashlib

    a = Artifact("b.bin", 1, "1" * 64)
    b = Artifact("a.json", 2, "2" * 64)
    manifest = f"{'2' * 64}  a.json\n{'1' * 64}  b.bin\n"
    assert version_digest([a, b]) == hashlib.sha256(manifest.encode()).hexdigest()
    assert version_digest([a, b]) == version_digest([b, a])
    assert version_digest([a]) != version_digest([Artifact("b.bin", 1, "3" * 64)])
