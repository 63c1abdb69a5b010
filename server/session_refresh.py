"""`auth:refresh {token}`: a connected socket carries on with a fresh session token.

Why: a signed-in widget's session ends (`STUDYHALL_IDENTITY_SESSION_HOURS`) and the
server closes its socket at that moment (server/revocation.py). The widget asks the host
page for a fresh identity token a little before, exchanges it, and hands the new session
to its socket here, so there is no disconnect, no reconnect gap and no resync. The socket's
actor, its `connections` row and its expiry timer move to the new token together; the old
token's expiry then closes nothing. Any client may use it with any session token of the
same user and role (docs/protocol.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from handlers import auth
from handlers.core import Actor, Core
from server.gateway import EventSpec, Gateway
from server.revocation import Revocation
from server.validation import Payload


class RefreshPayload(Payload):
    token: Annotated[str, Field(min_length=1, max_length=200)]


def events(gateway: Gateway, revocation: Revocation) -> list[EventSpec]:
    async def refresh(core: Core, actor: Actor, p: RefreshPayload) -> dict[str, Any]:
        fresh = await auth.refresh_socket(core, actor, p.token)
        state = gateway.sockets.get(actor.sid or "")
        if state is None:  # closed meanwhile: nothing to carry on
            return {"expires_at": fresh.token_expires_at}
        state.actor = fresh
        await revocation.rearm(fresh)
        return {"expires_at": fresh.token_expires_at}

    return [EventSpec("auth:refresh", refresh, RefreshPayload)]
