"""The README's examples build what they say they build (no network: resources open lazily)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapps_auth import VerifierChain, chain_from_config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


async def test_readme_toml_builds_the_chain_it_shows(tmp_path: Path) -> None:
    [toml] = [b for b in blocks("toml") if "[[stages]]" in b]
    path = tmp_path / "auth.toml"
    path.write_text(toml)
    env = {"AUTH_ISSUER_URL": "https://tenant.example.com/", "AUTH_AUDIENCE": "https://api.example.com"}
    chain = chain_from_config(path, env=env)
    assert [s.name for s in chain.stages] == ["jwt", "user-status", "rate-limit"]
    assert [o.name for o in chain.observers] == ["audit"]
    await chain.aclose()


async def test_readme_python_example_constructs_without_io() -> None:
    code = next(b for b in blocks("python") if "VerifierChain(" in b)
    setup = code.split("at = await")[0]  # up to the first use, which needs a token
    namespace: dict[str, object] = {}
    exec(compile(setup, "README.md", "exec"), namespace)
    chain = namespace["chain"]
    assert isinstance(chain, VerifierChain)
    assert [s.name for s in chain.stages] == ["jwt", "user-status", "rate-limit"]
    await chain.aclose()
