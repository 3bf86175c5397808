"""``fastapps-auth check``: --connect probes every component; a chain that cannot allow is an error; output and help."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field
from typer.testing import CliRunner

from fastapps_auth import Stage, StageOptions, Verification
from fastapps_auth.chain import VerifierChain
from fastapps_auth.cli import app
from fastapps_auth.cli.commands import probe_all
from fastapps_auth.component import ComponentOptions
from tests.support.stages import Counts, Probes, TokenIsSubject, registered

AUTH = '[[stages]]\nuse = "token-is-subject"\n'


@pytest.fixture(autouse=True)
def plugins() -> Iterator[None]:
    with registered(TokenIsSubject, Probes, Counts, LongOptions):
        yield


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    return path


def error_lines(result: Any) -> list[str]:
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("fastapps-auth: error: ") for line in lines), result.stderr
    return lines


def test_connect_ok_only_when_every_probe_succeeds(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, AUTH + '[[stages]]\nuse = "probes"\nname = "db"\n')
    result = runner.invoke(app, ["check", "--connect", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "every service reached" in result.stdout
    assert not result.stderr


def test_connect_reports_each_failure_on_its_own_line_and_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        AUTH
        + '[[stages]]\nuse = "probes"\nname = "users-db"\nprobe = "fail"\n'
        + '[[stages]]\nuse = "probes"\nname = "fine"\n'
        + '[[stages]]\nuse = "any-of"\nname = "either"\n'
        + '[[stages.stages]]\nuse = "probes"\nname = "redis"\nprobe = "fail"\n'
        + '[[stages.stages]]\nuse = "chain"\n'
        + '[[stages.stages.stages]]\nuse = "probes"\nname = "issuer"\nprobe = "hang"\n',
    )
    result = runner.invoke(app, ["check", "--connect", "--timeout", "0.2", str(path)])
    assert result.exit_code == 2, result.output
    assert "ok" not in result.stdout
    lines = error_lines(result)
    assert len(lines) == 3
    by_stage = {line.split("'")[1]: line for line in lines}
    assert set(by_stage) == {"users-db", "redis", "issuer"}
    assert f"{path}: stage 'users-db': ConnectionError: users-db: cannot reach 127.0.0.1:1" in by_stage["users-db"]
    assert "second line" not in result.stderr  # one line per failure
    assert "no answer within 0.2s" in by_stage["issuer"]


async def test_probes_run_concurrently_and_a_hanging_one_is_cancelled() -> None:
    hang, fail, fine = Probes(probe="hang", name="h"), Probes(probe="fail", name="f"), Probes(name="ok")
    chain = VerifierChain(TokenIsSubject(), hang, VerifierChain(fail, fine))
    problems = await probe_all(chain, 0.05)
    assert [(c.name, p.split(":")[0]) for c, p in problems] == [
        ("h", "no answer within 0.05s"),
        ("f", "ConnectionError"),
    ]
    assert (hang.probed, fail.probed, fine.probed) == (1, 1, 1) and hang.cancelled


def test_without_connect_nothing_is_probed(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, AUTH + '[[stages]]\nuse = "probes"\nprobe = "fail"\n')
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0 and "every service reached" not in result.stdout


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(
    runner: CliRunner, tmp_path: Path, timeout: str
) -> None:
    path = write(tmp_path, AUTH)
    result = runner.invoke(app, ["check", "--connect", "--timeout", timeout, str(path)])
    assert result.exit_code == 2 and "--timeout" in error_lines(result)[0]


def test_check_refuses_a_chain_with_no_authenticating_stage(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, '[[stages]]\nuse = "counts"\n')
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert str(path) in line and "no stage authenticates the token" in line


# -- output that is never wrapped when piped ------------------------------------------------------------


class LongOptionsOptions(StageOptions):
    a_rather_long_option_name_for_a_narrow_terminal: int = Field(
        default=1, description="A description long enough to need wrapping on any terminal of eighty columns or so."
    )


class LongOptions(Stage[LongOptionsOptions]):
    """A stage with a long option name."""

    plugin_name: ClassVar[str] = "long-options"
    options_model: ClassVar[type[ComponentOptions]] = LongOptionsOptions

    async def __call__(self, v: Verification) -> None:
        return None


def test_plugins_output_is_not_wrapped_when_piped(runner: CliRunner) -> None:
    result = runner.invoke(app, ["plugins", "long-options", "jwt"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    (row,) = [line for line in lines if "a_rather_long_option_name_for_a_narrow_terminal" in line]
    assert "eighty columns or so." in row  # the whole description on the option's own line
    assert any("min_refresh_interval" in line for line in lines)
    assert all(line == line.rstrip() for line in lines)  # no padding rich adds to table cells


def test_piped_through_a_real_pipe_too(tmp_path: Path) -> None:
    script = "import sys; from fastapps_auth.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", script, "plugins", "jwt"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "40", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("min_refresh_interval ") for line in result.stdout.splitlines())
    assert max(len(line) for line in result.stdout.splitlines()) > 40


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["verify", "--help"], ["plugins", "--help"]])
def test_help_shows_no_bool_placeholder(runner: CliRunner, argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout and "--help" in result.stdout
