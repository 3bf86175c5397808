"""One worker process of the multi-process DPoP replay test: ``python -m tests.support.dpop_worker JOB_JSON``.

It builds its own chain (``jwt`` with a static JWKS → ``dpop`` with the Redis replay cache), prints
``ready``, waits for ``go`` on standard input, then presents the job's token and proof once and
prints the decision as one JSON line. Every wait is bounded by the parent's timeouts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from fastapps_auth import FixedClock, RequestInfo, VerifierChain
from fastapps_auth.stages.dpop import DPoPStage
from fastapps_auth.stages.jwt import JWTVerifier


async def run(job: dict[str, Any]) -> dict[str, Any]:
    clock = FixedClock(job["now"])
    chain = VerifierChain(
        JWTVerifier(jwks=job["jwks"], issuer_url=job["issuer"], audience=job["audience"], clock=clock),
        DPoPStage(clock=clock, replay_cache=job["redis_url"], replay_prefix=job["prefix"]),
        clock=clock,
    )
    info = RequestInfo(method="POST", path="/mcp", url=job["url"], auth_scheme="dpop", dpop_proofs=(job["proof"],))
    try:
        await chain.start()
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return {"error": "no go"}
        d = await chain.evaluate(job["token"], request=info)
        return {"allowed": d.allowed, "reason": d.reason, "status": d.status}
    finally:
        await chain.aclose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))), flush=True)
