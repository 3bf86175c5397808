"""How a confidential client authenticates to an authorization server's endpoints (RFC 6749 §2.3.1).

One place for introspection (RFC 7662) and token exchange (RFC 8693): ``client_secret_basic`` (HTTP
Basic, each part form-urlencoded first, as §2.3.1 says) or ``client_secret_post`` (both in the form).
"""

from __future__ import annotations

import base64
from typing import Literal
from urllib.parse import quote

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post")


def client_authentication(client_id: str, client_secret: str, method: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(form fields, headers)`` that authenticate ``client_id`` with ``method``; ``ValueError`` for another method."""
    if method == "client_secret_post":
        return {"client_id": client_id, "client_secret": client_secret}, {}
    if method == "client_secret_basic":
        pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
        return {}, {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    raise ValueError(f"auth_method must be one of {', '.join(AUTH_METHODS)}, not {method!r}")
