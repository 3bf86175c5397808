"""Configuration a careless operator, a hostile environment or a broken plugin could produce.

Every case is a ``ConfigError`` naming file, stage and key (or a plugin reported as broken),
never an ``AttributeError``, a ``TypeError`` or a silently literal value.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from fastapps_auth import ConfigError, Stage, StageOptions, chain_from_config, registry
from fastapps_auth.config import interpolate
from fastapps_auth.options_info import options_of
from fastapps_auth.registry import GROUP, _info
from tests.support.stages import Counts, Fails, TokenIsSubject, registered


@pytest.fixture(autouse=True)
def test_plugins() -> Iterator[None]:
    with registered(TokenIsSubject, Fails, Counts):
        yield


AUTH = {"use": "token-is-subject"}

# -- interpolation ---------------------------------------------------------------------------------


def test_a_value_from_the_environment_is_not_expanded_again() -> None:
    env = {"A": "${B}", "B": "secret", "C": "$$"}
    assert interpolate("${A}", env) == "${B}"
    assert interpolate("${C}", env) == "$$"
    assert interpolate("${X:-a$b}", env) == "a$b"  # a default is text, never a reference


def test_interpolation_happens_after_parsing_so_a_value_cannot_inject_toml(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text('[[stages]]\nuse = "token-is-subject"\nprefix = "${P}"\n')
    hostile = 'x"\nscopes = ["admin"]\n[[stages]]\nuse = "fails'
    chain = chain_from_config(path, env={"P": hostile})
    (stage,) = chain.stages
    assert stage.options.prefix == hostile and stage.options.scopes == []


@pytest.mark.parametrize(
    "text",
    [
        "${AUTH_ISSUER_URL",  # an unclosed brace
        "${AUTH_AUDIENCE:default}",  # ':' without '-'
        "${DATABASE-URL}",  # not a variable name
        "${}",
        "${ A }",
        "${A:-${B}}",  # nested references are not supported
    ],
)
def test_a_malformed_reference_is_an_error_not_a_literal(text: str) -> None:
    with pytest.raises(ConfigError, match=r"\$\$\{") as err:
        chain_from_config({"stages": [{**AUTH, "prefix": text}]}, env={"A": "a", "B": "b"})
    assert "stages[0] (token-is-subject)" in str(err.value) and "key 'prefix'" in str(err.value)


def test_the_documented_escape_still_writes_a_literal_reference() -> None:
    assert interpolate("$${A} $$ ${A:-x}-$", {}) == "${A} $ x-$"


@given(st.text(alphabet=st.sampled_from("${}:-AB_1 x"), max_size=30))
def test_interpolation_either_succeeds_or_is_a_config_error(text: str) -> None:
    try:
        out = interpolate(text, {"A": "${B}"})
    except ConfigError:
        return
    assert isinstance(out, str)


def test_a_very_long_value_is_substituted_whole() -> None:
    value = "v" * 1_000_000
    assert interpolate("${BIG}", {"BIG": value}) == value


def test_a_missing_variable_in_the_chain_name_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"key 'chain\.name'"):
        chain_from_config({"chain": {"name": "${NOT_SET}"}, "stages": [AUTH]}, env={})


# -- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"stages": [1]}, "stages[0]"),
        ({"stages": ["jwt"]}, "stages[0]"),
        ({"stages": [AUTH, ["use", "counts"]]}, "stages[1]"),
        ({"stages": [{"use": "any-of", "stages": [3]}]}, "stages[0].stages[0]"),
    ],
)
def test_a_stage_that_is_not_a_table_is_a_config_error(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match="must be a table") as err:
        chain_from_config(data)
    assert where in str(err.value)


@pytest.mark.parametrize(
    "data",
    [
        {"stages": [AUTH, {"use": "counts", "name": 5}]},
        {"stages": [AUTH, {"use": "counts", "name": ["a"]}]},
        {"stages": [{"use": "any-of", "name": 5, "stages": [AUTH]}]},
        {"chain": {"name": 5}, "stages": [AUTH]},
    ],
)
def test_a_name_that_is_not_a_string_is_a_config_error(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="'name'"):
        chain_from_config(data)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_infinite_and_nan_numbers_are_refused(value: float) -> None:
    """``retry_after = inf`` would send ``Retry-After: inf`` and write ``Infinity`` into JSON."""
    with pytest.raises(ConfigError, match="key 'retry_after'"):
        chain_from_config({"stages": [AUTH, {"use": "fails", "retry_after": value}]})


def test_toml_inf_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text('[[stages]]\nuse = "token-is-subject"\nretry_after = inf\n')
    with pytest.raises(ConfigError, match="key 'retry_after'") as err:
        chain_from_config(path)
    assert str(path) in str(err.value)


# -- files -----------------------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_bytes(b'[[stages]]\nuse = "token-is-subject"\nname = "caf\xe9"\n')  # Latin-1
    with pytest.raises(ConfigError, match="UTF-8") as err:
        chain_from_config(path)
    assert str(path) in str(err.value)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_bytes(b'\xef\xbb\xbf[[stages]]\nuse = "token-is-subject"\n')
    assert [s.name for s in chain_from_config(path).stages] == ["token-is-subject"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "stages = 3\n", "[stages]\nuse = 'x'\n"])
def test_empty_or_misshapen_files_say_what_is_missing(tmp_path: Path, text: str) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="needs at least one"):
        chain_from_config(path)


def test_a_directory_or_an_impossible_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        chain_from_config(tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        chain_from_config(str(tmp_path / "a\0b.toml"))


# -- plugins ---------------------------------------------------------------------------------------


def _plugin_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_plugin_that_exits_on_import_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _plugin_module(monkeypatch, tmp_path, "fastapps_auth_exits_on_import", "raise SystemExit(3)\n")
    info = _info("exits", [EntryPoint(name="exits", value="fastapps_auth_exits_on_import:Stage", group=GROUP)])
    assert info.component is None and info.error is not None and "SystemExit" in info.error


class NotAModel(Stage[StageOptions]):
    """Declares something that is not an options model."""

    plugin_name: ClassVar[str] = "not-a-model"
    options_model: ClassVar[Any] = dict


def test_a_plugin_whose_options_model_is_not_a_model_is_broken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _plugin_module(
        monkeypatch, tmp_path, "fastapps_auth_bad_model", "from tests.test_config_attacks import NotAModel\n"
    )
    ep = EntryPoint(name="not-a-model", value="fastapps_auth_bad_model:NotAModel", group=GROUP)
    info = _info("not-a-model", [ep])
    assert info.component is None and info.error is not None and "options_model" in info.error
    with pytest.raises(TypeError, match="options_model"):
        registry.register("not-a-model", NotAModel)


class OddDefaults(StageOptions):
    table: dict[tuple[int, int], int] = Field(default={(1, 2): 3}, description="Keys JSON cannot write.")
    cyclic: list[Any] = Field(default_factory=list, description="Fine.")


def test_a_default_json_cannot_write_is_still_shown() -> None:
    (table,) = [o for o in options_of(OddDefaults) if o.name == "table"]
    assert table.default_text is not None and "(1, 2)" in table.default_text


class Bare(BaseModel):
    x: int = 1


def test_options_of_any_model_works() -> None:
    assert [o.name for o in options_of(Bare)] == ["x"]
