"""The one endpoint policy: loopback is decided by the address, never by how a name starts."""

from __future__ import annotations

import pytest

from fastapps_auth.backends.ratelimit import check_uri
from fastapps_auth.endpoints import check_url, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["", None, "127.attacker.example", "127.0.0.1.nip.io", "localhost.example", "0.0.0.0", "10.0.0.1", "::"]
)
def test_hosts_that_are_not_loopback(host: str | None) -> None:
    assert not is_loopback(host)


def test_plaintext_redis_to_a_name_that_looks_like_loopback_is_refused() -> None:
    with pytest.raises(ValueError, match="unencrypted"):
        check_uri("redis://127.attacker.example:6379/0")
    assert check_uri("redis://127.0.0.1:6379/0") == "redis"


def test_check_url() -> None:
    assert check_url("https://issuer.example/") == "https://issuer.example/"
    assert check_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/"
    with pytest.raises(ValueError, match="https"):
        check_url("http://127.attacker.example/")
    with pytest.raises(ValueError, match="not on loopback"):
        check_url("http://127.0.0.1/", loopback_http=False)
    assert check_url("http://issuer.internal/", allow_insecure_http=True) == "http://issuer.internal/"
