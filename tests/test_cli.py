"""The ``fastapps-auth`` CLI: plugins, check, verify (tables and JSON, --now, stdin), forwarding commands."""

from __future__ import annotations

import io
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mcp.server.auth.provider import AccessToken
from pydantic import Field
from typer.testing import CliRunner

from fastapps_auth import Rejected, Stage, StageOptions, Verification, fingerprint, registry
from fastapps_auth.cli import app, main
from fastapps_auth.options_info import type_label

EXPIRES = 1_800_000_000
GOOD = "cli-good-token-0123456789abcdefghijklmnop"
OTHER = "cli-other-token-0123456789abcdefghijklmn"
BAD = "cli-bad-token-0123456789abcdefghijklmnopq"


class ExpiringOptions(StageOptions):
    subjects: dict[str, str] = Field(default_factory=dict, description="Token → subject.")
    expires_at: int = Field(default=EXPIRES, description="When every token expires (epoch).")


class ExpiringAuth(Stage[ExpiringOptions]):
    """Authenticates the configured tokens until ``expires_at`` (judged against the verification's now)."""

    plugin_name: ClassVar[str] = "cli-test-auth"
    options_model: ClassVar[type[StageOptions]] = ExpiringOptions
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        subject = self.options.subjects.get(v.token)
        if subject is None:
            raise Rejected("bad_signature", "the token signature is invalid")
        if v.now >= self.options.expires_at:
            raise Rejected("expired", "the token has expired")
        v.access_token = AccessToken(
            token=v.token, client_id="cli", scopes=["read"], expires_at=self.options.expires_at, subject=subject
        )


@pytest.fixture(autouse=True)
def test_plugin() -> Iterator[None]:
    registry.register("cli-test-auth", ExpiringAuth)
    yield
    registry.unregister("cli-test-auth")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(
        f"""
[[stages]]
use = "cli-test-auth"
subjects = {{ "{GOOD}" = "alice", "{OTHER}" = "bob" }}
"""
    )
    return path


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastapps-auth: error: ")
    return str(lines[0])


def test_verify_allowed_tokens_exit_0_with_fingerprints_not_tokens(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["verify", "--config", str(config), GOOD, OTHER])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ALLOWED") == 2
    assert fingerprint(GOOD) in result.stdout
    assert "subject=bob" in result.stdout
    assert "cli-test-auth" in result.stdout  # the trace table
    assert GOOD not in result.output
    assert GOOD[:20] not in result.output


def test_verify_any_rejection_exits_1(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["verify", "--config", str(config), GOOD, BAD])
    assert result.exit_code == 1, result.output
    assert "ALLOWED" in result.stdout
    assert "REJECTED" in result.stdout
    assert "bad_signature" in result.stdout
    assert BAD[:20] not in result.output


def test_verify_json_lines(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["verify", "-c", str(config), "--json", GOOD, BAD])
    assert result.exit_code == 1
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert (first["allowed"], first["subject"], first["token_fingerprint"]) == (True, "alice", fingerprint(GOOD))
    assert (second["allowed"], second["reason"], second["stage"], second["status"]) == (
        False,
        "bad_signature",
        "cli-test-auth",
        401,
    )
    assert [t["outcome"] for t in second["trace"]] == ["rejected"]


def test_verify_reads_tokens_from_stdin(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["verify", "--config", str(config), "--json"], input=f"{GOOD}\n\n  {OTHER}  \n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["subject"] for line in result.stdout.splitlines()] == ["alice", "bob"]


def test_verify_now_pins_the_clock(runner: CliRunner, config: Path) -> None:
    late = runner.invoke(app, ["verify", "--config", str(config), "--json", "--now", str(EXPIRES + 60), GOOD])
    assert late.exit_code == 1
    assert json.loads(late.stdout)["reason"] == "expired"
    early = runner.invoke(app, ["verify", "--config", str(config), "--json", "--now", str(EXPIRES - 60), GOOD])
    assert early.exit_code == 0
    assert json.loads(early.stdout)["expires_at"] == EXPIRES


def test_verify_without_tokens_is_a_usage_error(runner: CliRunner, config: Path) -> None:
    line = one_line_error(runner.invoke(app, ["verify", "--config", str(config)], input=""))
    assert "no token" in line


def test_verify_config_error_is_one_line_naming_file_stage_and_key(
    runner: CliRunner, config: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stages]]\nuse = "cli-test-auth"\nexpires = 5\n')
    line = one_line_error(runner.invoke(app, ["verify", "--config", str(bad), GOOD]))
    assert str(bad) in line
    assert "stages[0] (cli-test-auth)" in line
    assert "key 'expires'" in line


def test_check_ok_and_errors(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["check", str(config)])
    assert ok.exit_code == 0
    assert "ok" in ok.stdout
    assert "cli-test-auth" in ok.stdout

    missing = one_line_error(runner.invoke(app, ["check", str(tmp_path / "nope.toml")]))
    assert "file not found" in missing

    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[stages]]\nuse = "no-such-plugin"\n')
    line = one_line_error(runner.invoke(app, ["check", str(unknown)]))
    assert "unknown plugin 'no-such-plugin'" in line

    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("[[stages]\n")
    assert "not valid TOML" in one_line_error(runner.invoke(app, ["check", str(broken_toml)]))


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("plugin bug", "RuntimeError: plugin bug"),
        # a message cannot forge a second error line or drive the terminal
        ("first line\nfastapps-auth: error: \x1b[31mforged", "first line\\nfastapps-auth: error: \\x1b[31mforged"),
    ],
    ids=["plain", "newlines-and-escapes"],
)
def test_check_reports_a_constructor_crash_as_one_line(
    runner: CliRunner, tmp_path: Path, message: str, shown: str
) -> None:
    class Crashing(ExpiringAuth):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError(message)

    registry.register("cli-crashing", Crashing)
    try:
        path = tmp_path / "crash.toml"
        path.write_text('[[stages]]\nuse = "cli-crashing"\n')
        line = one_line_error(runner.invoke(app, ["check", str(path)]))
        assert shown in line
    finally:
        registry.unregister("cli-crashing")


def test_plugins_json_lists_options_from_the_models(runner: CliRunner) -> None:
    result = runner.invoke(app, ["plugins", "--json", "audit", "cli-test-auth"])
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {"audit", "cli-test-auth"}
    audit = records["audit"]
    assert (audit["kind"], audit["distribution"], audit["error"]) == ("observer", "fastapps-auth", None)
    assert audit["version"]
    options = {o["name"]: o for o in audit["options"]}
    assert options["sample_allowed"] == {
        "name": "sample_allowed",
        "type": "float",
        "default": "1.0",
        "description": options["sample_allowed"]["description"],
    }
    assert "rejections" in options["sample_allowed"]["description"]
    assert options["renderer"]["type"] == '"json" | "logfmt" | "console" | "structlog"'
    assert options["claims"]["default"] == "[]"
    mine = {o["name"]: o for o in records["cli-test-auth"]["options"]}
    assert mine["subjects"]["type"] == "dict[str, str]"
    assert mine["expires_at"]["default"] == str(EXPIRES)
    assert records["cli-test-auth"]["kind"] == "stage"


def test_plugins_table_for_people(runner: CliRunner) -> None:
    result = runner.invoke(app, ["plugins", "metrics"])
    assert result.exit_code == 0
    assert "metrics" in result.stdout
    assert "observer" in result.stdout
    assert "max_label_sets" in result.stdout


def test_plugins_unknown_name(runner: CliRunner) -> None:
    assert "no plugin named 'nope'" in one_line_error(runner.invoke(app, ["plugins", "nope"]))


@pytest.mark.parametrize(
    ("annotation", "label"),
    [
        (int, "int"),
        (str | None, "str | None"),
        (list[str], "list[str]"),
        (dict[str, list[int]], "dict[str, list[int]]"),
    ],
)
def test_type_label(annotation: Any, label: str) -> None:
    assert type_label(annotation) == label


def test_dev_issuer_forwards_its_arguments(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(args: list[str]) -> int:
        seen.append(args)
        return 3

    module = types.ModuleType("fastapps_auth.dev_issuer.cli")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fastapps_auth.dev_issuer.cli", module)
    result = runner.invoke(app, ["dev-issuer", "--port", "9000", "mint", "--help", "alice"])
    assert result.exit_code == 3
    assert seen == [["--port", "9000", "mint", "--help", "alice"]]


def test_demo_calls_run_and_uses_its_exit_code(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fastapps_auth.demo")
    module.run = lambda: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fastapps_auth.demo", module)
    assert runner.invoke(app, ["demo"]).exit_code == 0
    module.run = lambda: 4  # type: ignore[attr-defined]
    assert runner.invoke(app, ["demo"]).exit_code == 4


def test_main_returns_the_exit_code(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--config", str(config), "--json", GOOD]) == 0
    assert main(["verify", "--config", str(config), "--json", BAD]) == 1
    assert main(["check", str(config.parent / "missing.toml")]) == 2
    assert main(["no-such-command"]) == 2
    out = capsys.readouterr()
    assert GOOD not in out.out + out.err


class SurrogateAuth(ExpiringAuth):
    """Authenticates like ``cli-test-auth``, then appends a lone surrogate to the subject (TOML cannot carry one)."""

    plugin_name: ClassVar[str] = "cli-test-surrogate"

    async def __call__(self, v: Verification) -> None:
        await super().__call__(v)
        assert v.access_token is not None
        v.access_token = v.access_token.model_copy(update={"subject": f"{v.access_token.subject}\ud800"})


@pytest.mark.parametrize(
    ("encoding", "use", "shown"),
    [
        ("ascii", "cli-test-auth", "subject=zo\\xeb"),  # LANG=C: a terminal that only takes ASCII
        ("utf-8", "cli-test-surrogate", "subject=zoë\\ud800"),  # a lone surrogate: no encoding writes it
    ],
)
def test_what_the_terminal_cannot_write_is_escaped_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str, use: str, shown: str
) -> None:
    registry.register("cli-test-surrogate", SurrogateAuth)
    path = tmp_path / "auth.toml"
    path.write_text(f'[[stages]]\nuse = "{use}"\nsubjects = {{ "{GOOD}" = "zoë" }}\n', encoding="utf-8")
    out, err = io.BytesIO(), io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding=encoding))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(err, encoding=encoding))
    try:
        assert main(["verify", "--config", str(path), GOOD]) == 0
    finally:
        registry.unregister("cli-test-surrogate")
    sys.stdout.flush()
    sys.stderr.flush()
    assert shown in out.getvalue().decode(encoding)
    assert b"Traceback" not in err.getvalue()


def test_stdin_that_is_not_utf8_is_decided_line_by_line_not_a_traceback(runner: CliRunner, config: Path) -> None:
    data = f"{GOOD}\r\n\xff\xfebinary\x00junk\r\n   \r\n{OTHER}\n".encode("latin-1")
    result = runner.invoke(app, ["verify", "--config", str(config), "--json"], input=data)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["allowed"], r["subject"]) for r in records] == [(True, "alice"), (False, None), (True, "bob")]


@pytest.mark.parametrize("now", ["nan", "inf", "-inf", "1e400"])
def test_verify_refuses_a_clock_that_is_not_a_time(runner: CliRunner, config: Path, now: str) -> None:
    """``--now nan`` made every comparison false: an expired token would look valid."""
    line = one_line_error(runner.invoke(app, ["verify", "--config", str(config), "--now", now, GOOD]))
    assert "--now" in line


def test_control_characters_from_a_token_cannot_drive_the_terminal(runner: CliRunner, tmp_path: Path) -> None:
    """A subject is whatever the issuer signed: an escape sequence or a newline must not reach the terminal raw."""
    path = tmp_path / "auth.toml"
    path.write_text(
        f'[[stages]]\nuse = "cli-test-auth"\nsubjects = {{ "{GOOD}" = "eve\\u001b[2J\\nALLOWED #9\\u202e" }}\n'
    )
    result = runner.invoke(app, ["verify", "--config", str(path), GOOD])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "subject=eve\\x1b[2J\\nALLOWED" in result.stdout
    assert sum(line.startswith("ALLOWED") for line in result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["verify", GOOD], "--config"),
        (["verify", "--config", "CONFIG", "--now", "soon", GOOD], "--now"),
        (["no-such-command"], "no-such-command"),
        (["check"], "Missing argument 'CONFIG'"),
    ],
)
def test_usage_errors_are_one_line_too(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fastapps-auth: error: ") and fragment in lines[0]
