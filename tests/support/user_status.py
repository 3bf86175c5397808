"""Building user-status chains in tests: ``TokenUser`` in front, the stage under test behind it."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from fastapps_auth import AccessToken, ManualClock, Rejected, Stage, StageOptions, Verification, VerifierChain
from fastapps_auth.fingerprint import fingerprint
from fastapps_auth.stages.user_status import UserStatusStage


async def settle() -> None:
    """Let every ready task run to its next wait (a few loop iterations, no clock involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


class TokenUser(Stage[StageOptions]):
    """Authenticates ``user:<id>``: subject <id>, client_id ``client-<id>``, claim ``employee`` = ``e-<id>``."""

    plugin_name: ClassVar[str] = "token-user"
    authenticates: ClassVar[bool] = True

    async def __call__(self, v: Verification) -> None:
        kind, _, user = v.token.partition(":")
        if kind != "user" or not user:
            raise Rejected("bad_signature")
        v.access_token = AccessToken(
            token=fingerprint(v.token),
            client_id=f"client-{user}",
            scopes=[],
            subject=user,
            claims={"sub": user, "employee": f"e-{user}"},
            expires_at=int(v.now) + 3600,
        )


class UserStatusChains:
    """``chains(**options)`` builds ``TokenUser → user-status`` on the test's clock; ``aclose`` closes them all.

    ``defaults`` are the stage options of every chain it builds (a call's own options win).
    """

    def __init__(self, clock: ManualClock, **defaults: Any) -> None:
        self.clock = clock
        self.defaults = defaults
        self._made: list[VerifierChain] = []

    def __call__(self, **options: Any) -> tuple[VerifierChain, UserStatusStage]:
        stage = UserStatusStage(clock=self.clock, **{**self.defaults, **options})
        chain = VerifierChain(TokenUser(), stage, clock=self.clock)
        self._made.append(chain)
        return chain, stage

    async def aclose(self) -> None:
        for chain in self._made:
            await chain.aclose()
