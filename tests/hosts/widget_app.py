"""A ``WidgetMCPServer`` on 127.0.0.1 for the host tests, run by the main venv's Python (FastApps needs mcp 1.x):

    .venv/bin/python -m tests.hosts.widget_app ISSUER_URL PORT

The MCP endpoint is ``/mcp``; its ``reports`` widget needs ``reports:read`` (``@auth_required``).
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapps import BaseWidget, auth_required

from fastapps_auth.integrations.fastapps import WidgetMCPServer
from tests.support.widgets import NoInput, build


@auth_required(scopes=["reports:read"])
class Reports(BaseWidget):  # type: ignore[misc]  # fastapps ships no type information: BaseWidget is Any
    identifier = "reports"
    title = "Reports"
    input_schema = NoInput

    async def execute(self, input_data: Any, context: Any = None, user: Any = None) -> dict[str, Any]:
        return {"subject": user.subject, "aud": user.claims.get("aud"), "scopes": user.scopes}


def main(issuer_url: str, port: int) -> None:
    resource = f"http://127.0.0.1:{port}/mcp"
    server = WidgetMCPServer("widgets", [build(Reports)], auth_issuer_url=issuer_url, auth_resource_server_url=resource)
    uvicorn.run(server.get_app(), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
