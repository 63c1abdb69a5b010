"""Idempotent messages from an app: a retried `POST /api/platform/conversations/{id}/messages`
with the same key is the first message, never a second one (docs/integration.md).

The key names the message itself: its id is a UUIDv5 of the app and the key. The message
row is then the only record of the key, committed in the same statement as the message,
so nothing can be half-written: a retry after a crash between the commit and the response,
or on another instance, finds the row by its id; two retries racing each other collide on
the messages table's primary key, and the loser reads the winner's row. No key table to
keep in step, no expiry to tune. (The `(conversation, sender, client_id)` index that makes
the socket protocol's `client_id` idempotent does not help here: an app's message has no
sender, and NULLs never collide in a unique index.)
"""

from __future__ import annotations

import uuid
from uuid import UUID

from handlers.errors import ApiError
from storage.records import Message

# Fixed forever: changing it would let every key post its message a second time.
_NAMESPACE = uuid.UUID("6f7c1d2e-4b1a-5c53-9a7e-2f0c8e1d9b44")


def message_id(app_id: UUID, key: str) -> UUID:
    """The id of the app's message posted with this idempotency key (the same on every instance)."""
    return uuid.uuid5(_NAMESPACE, f"{app_id}\n{key}")


def check_replay(existing: Message, conversation_id: UUID, content: str) -> Message:
    """`existing` if the retry asks for the same message; `conflict` if the key was used for
    another one (as Stripe refuses a key reused with other parameters)."""
    # A deleted message has lost its text: the conversation is all a retry can still match.
    changed = not existing.deleted and existing.content != content
    if existing.conversation_id != conversation_id or changed:
        raise ApiError("conflict", "This idempotency key was already used for a different message.")
    return existing
