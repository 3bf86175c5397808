"""chain_from_config: TOML and dicts, ${VAR} interpolation, errors naming file, stage and key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapps_auth import AnyOf, ConfigError, PluginError, VerifierChain, chain_from_config
from fastapps_auth.config import interpolate
from tests.support.stages import Counts, Fails, TokenIsSubject, registered


@pytest.fixture(autouse=True)
def test_plugins() -> Iterator[None]:
    with registered(TokenIsSubject, Fails, Counts):
        yield


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    return path


async def test_builds_a_chain_from_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[chain]
name = "main"

[[stages]]
use = "token-is-subject"
prefix = "${PREFIX:-u:}"
scopes = ["read"]

[[stages]]
use = "counts"
name = "after"
""",
    )
    chain = chain_from_config(path, env={})
    assert isinstance(chain, VerifierChain) and chain.name == "main"
    assert [s.name for s in chain.stages] == ["token-is-subject", "after"]
    at = await chain.verify_token("u:alice")
    assert at is not None and at.subject == "alice" and at.scopes == ["read"]


async def test_a_mapping_works_like_a_file() -> None:
    chain = chain_from_config({"stages": [{"use": "token-is-subject"}]})
    assert await chain.verify_token("user:bob") is not None


def test_environment_variables_fill_values() -> None:
    chain = chain_from_config(
        {"stages": [{"use": "token-is-subject", "prefix": "${P}"}, {"use": "fails", "retry_after": "${R:-3}"}]},
        env={"P": "tok-"},
    )
    auth, fails = chain.stages
    assert auth.options.prefix == "tok-"
    assert fails.retry_after == 3.0


def test_missing_variable_names_file_stage_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[stages]]\nuse = "token-is-subject"\nprefix = "${NOT_SET_ANYWHERE}"\n')
    with pytest.raises(ConfigError) as err:
        chain_from_config(path, env={})
    msg = str(err.value)
    assert str(path) in msg and "stages[0] (token-is-subject)" in msg and "'prefix'" in msg
    assert "NOT_SET_ANYWHERE" in msg


def test_unknown_key_names_file_stage_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[[stages]]\nuse = "token-is-subject"\n\n[[stages]]\nuse = "fails"\nname = "db"\nretry = 1\n'
    )
    with pytest.raises(ConfigError) as err:
        chain_from_config(path)
    msg = str(err.value)
    assert str(path) in msg and "stages[1] (db)" in msg and "'retry'" in msg and "unknown option" in msg


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[stages]]\nuse = "fails"\nretry_after = "later"\n')
    with pytest.raises(ConfigError, match=r"stages\[0\] \(fails\): key 'retry_after'"):
        chain_from_config(path)


def test_unknown_plugin_lists_what_is_installed(tmp_path: Path) -> None:
    path = write(tmp_path, '[[stages]]\nuse = "jwtt"\n')
    with pytest.raises(PluginError) as err:
        chain_from_config(path)
    assert "unknown plugin 'jwtt'" in str(err.value) and "token-is-subject" in str(err.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "needs at least one [[stages]]"),
        ({"stages": []}, "needs at least one [[stages]]"),
        ({"stages": [{"name": "x"}]}, "missing 'use'"),
        ({"stages": [{"use": "counts"}], "extra": 1}, "unknown top-level key"),
        ({"stages": [{"use": "counts"}], "chain": {"colour": "red"}}, "[chain] accepts only"),
        ({"stages": [{"use": "any-of", "stages": []}]}, "non-empty list"),
    ],
)
def test_malformed_configs_are_clear_errors(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        chain_from_config(data)
    assert fragment in str(err.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[[stages]\nuse=")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        chain_from_config(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        chain_from_config(tmp_path / "nope.toml")


async def test_any_of_and_nested_chains_from_config() -> None:
    chain = chain_from_config(
        {
            "stages": [
                {
                    "use": "any-of",
                    "name": "issuers",
                    "stages": [
                        {"use": "token-is-subject", "name": "a", "prefix": "a:"},
                        {"use": "chain", "stages": [{"use": "token-is-subject", "name": "b", "prefix": "b:"}]},
                    ],
                }
            ]
        }
    )
    assert isinstance(chain.stages[0], AnyOf)
    assert (await chain.verify_token("b:carol")) is not None
    d = await chain.evaluate("c:dave")
    assert d.stage == "issuers" and d.status == 401


def test_nested_errors_name_the_nested_stage() -> None:
    with pytest.raises(ConfigError) as err:
        chain_from_config({"stages": [{"use": "any-of", "stages": [{"use": "fails", "bogus": 1}]}]})
    assert "stages[0].stages[0] (fails)" in str(err.value) and "'bogus'" in str(err.value)


def test_interpolation_escapes_and_defaults() -> None:
    env = {"A": "1"}
    assert interpolate("$${A}", env) == "${A}"
    assert interpolate("x${A}y${B:-2}", env) == "x1y2"
    assert interpolate("${B:-}", env) == ""
    assert interpolate({"k": ["${A}", 3]}, env) == {"k": ["1", 3]}


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=50))
def test_interpolation_leaves_plain_text_alone(text: str) -> None:
    assert interpolate(text, {}) == text


# -- a chain must be able to allow something ------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "listed"),
    [
        ('[[stages]]\nuse = "rate-limit"\nlimit = 10\nwindow = 60\n', "rate-limit"),
        ('[[stages]]\nuse = "user-status"\ndsn = "sqlite:///users.db"\n', "user-status"),
        (
            '[[stages]]\nuse = "roles"\n[stages.scopes]\nadmin = ["x"]\n\n'
            '[[stages]]\nuse = "scopes"\nrequired = ["x"]\n',
            "roles, scopes",
        ),
    ],
    ids=["only-rate-limit", "only-user-status", "roles-and-scopes"],
)
def test_a_chain_without_an_authenticating_stage_is_an_error_naming_the_file(
    tmp_path: Path, stages: str, listed: str
) -> None:
    path = write(tmp_path, stages)
    with pytest.raises(ConfigError) as err:
        chain_from_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: key 'stages': no stage authenticates the token (stages: {listed})")
    assert 'use = "jwt"' in message


def test_an_any_of_authenticates_only_if_every_alternative_does() -> None:
    """``AnyOf(ip-check, jwt)`` passes on the first alternative without any token being authenticated."""
    partial = {
        "stages": [
            {"use": "any-of", "name": "either", "stages": [{"use": "counts"}, {"use": "token-is-subject"}]},
        ]
    }
    with pytest.raises(ConfigError, match="every alternative does \\('either': counts does not\\)"):
        chain_from_config(partial)
    whole = {
        "stages": [
            {"use": "any-of", "stages": [{"use": "token-is-subject", "name": "a"}, {"use": "token-is-subject"}]},
        ]
    }
    assert isinstance(chain_from_config(whole).stages[0], AnyOf)
    # the same partial any-of is fine when another stage authenticates
    chain_from_config({"stages": [{"use": "token-is-subject", "name": "first"}, *partial["stages"]]})


def test_a_nested_chain_that_authenticates_counts() -> None:
    chain = chain_from_config(
        {
            "stages": [
                {"use": "counts"},
                {"use": "chain", "stages": [{"use": "counts", "name": "c"}, {"use": "token-is-subject"}]},
            ]
        }
    )
    assert len(chain.stages) == 2
