"""Response bodies of the HTTP API, as pydantic models: the OpenAPI description's response
schemas (server/openapi.py), checked against the running server by tests/test_openapi.py
(schemathesis validates every answer it gets against them).

They describe what the handlers return (`handlers/*`, their `*_out` functions) and are
not used to build the answers: an object may carry more fields than listed
(`extra="allow"`, additionalProperties); a listed field is always there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, WithJsonSchema

from handlers.errors import ERROR_CODES


class Out(BaseModel):
    """An object the server returns: these fields at least."""

    model_config = ConfigDict(extra="allow")


ErrorCode = Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(ERROR_CODES)})]


class ErrorDetail(Out):
    code: ErrorCode
    message: str
    retry_after_ms: int | None = None


class ErrorBody(Out):
    """Every error, over HTTP: `{error: {code, message}}` (server/http.py), with
    `retry_after_ms` (and a `Retry-After` header) when waiting helps."""

    error: ErrorDetail


# --- people and sign-in ------------------------------------------------------------------

class PublicUser(Out):
    id: UUID
    name: str
    role: str


class UserResult(Out):
    user: PublicUser


class SignedIn(Out):
    user: PublicUser
    token: str
    # Identity sign-ins: when the session ends (a client refreshes it before: auth:refresh).
    expires_at: datetime | None = None


class Health(Out):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "down"]
    redis: Literal["ok", "down", "disabled"]


class Presence(Out):
    online: list[UUID]


# --- conversations and messages ----------------------------------------------------------

class Message(Out):
    id: UUID
    conversation_id: UUID
    seq: int
    sender_id: UUID | None
    role: str
    content: str
    created_at: datetime


class Conversation(Out):
    id: UUID
    kind: str
    title: str | None
    status: str
    mode: str | None
    members: list[dict[str, Any]]
    last_seq: int
    unread: int
    created_at: datetime


class ConversationList(Out):
    conversations: list[Conversation]


class MessagePage(Out):
    messages: list[Message]
    has_more: bool


class Transcript(MessagePage):
    conversation: Conversation


class MessageResult(Out):
    message: Message


# --- knowledge base ----------------------------------------------------------------------

class Document(Out):
    id: UUID
    title: str
    source: str | None
    language: str | None
    course: str | None
    content_hash: str
    created_at: datetime
    chunk_count: int


class DocumentResult(Out):
    document: Document


class DocumentCreated(DocumentResult):
    created: bool


class DocumentDeleted(DocumentResult):
    deleted: bool


class DocumentList(Out):
    documents: list[Document]


class SearchHit(Out):
    chunk_id: UUID
    document_id: UUID
    title: str
    content: str
    score: float
    heading_path: list[str]


class SearchResults(Out):
    results: list[SearchHit]


class RetrieverFigures(Out):
    """One retriever's averages; also `recall@K` for each K asked, `mrr@K` and `ndcg@K`
    at the largest K (keys named by the cutoffs, so listed as additional properties)."""

    retriever: str
    questions: int
    p50_ms: float
    p95_ms: float


class QuestionOutcome(Out):
    id: str
    question: str
    # Per retriever: the position of the first chunk of a right document, null if missed.
    first_relevant: dict[str, int | None]


class EvalResult(Out):
    embedder: str
    configured: str
    k: list[int]
    course: str | None
    questions: int
    retrievers: list[RetrieverFigures]
    per_question: list[QuestionOutcome]


# --- tutor -------------------------------------------------------------------------------

class Usage(Out):
    user_id: UUID
    since: datetime | None
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    by_model: list[dict[str, Any]]


class UsageResult(Out):
    usage: Usage


class Decisions(Out):
    decisions: list[dict[str, Any]]


# --- live sessions -----------------------------------------------------------------------

class LiveSession(Out):
    id: UUID
    title: str
    host_id: UUID
    status: str
    type: str
    scheduled_start_time: datetime | None
    max_participants: int
    current_participants: int
    conversation_id: UUID | None
    is_featured: bool
    created_at: datetime


class LiveSessionResult(Out):
    live_session: LiveSession


class LiveSessionList(Out):
    live_sessions: list[LiveSession]


class Favorite(Out):
    user_id: UUID
    notify_when_online: bool
    user: PublicUser
    created_at: datetime


class FavoriteResult(Out):
    favorite: Favorite


class FavoriteList(Out):
    favorites: list[Favorite]


# --- tickets -----------------------------------------------------------------------------

class Ticket(Out):
    id: UUID
    number: str
    conversation_id: UUID
    status: str
    priority: str
    category: str | None
    created_at: datetime


class TicketResult(Out):
    ticket: Ticket


class TicketList(Out):
    tickets: list[Ticket]


class TicketDetail(Out):
    ticket: Ticket
    messages: list[Message]
    messages_complete: bool
    notes: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    conversation: Conversation
    related_tickets: list[Ticket]


class Priority(Out):
    priority: str
    sla_hours: float
    names: dict[str, str | None]


class PriorityList(Out):
    priorities: list[Priority]


# --- apps and API keys -------------------------------------------------------------------

class App(Out):
    id: UUID
    name: str
    created_at: datetime
    key_type: Literal["hmac", "public_key", "jwks"]
    issuer: str
    audience: str
    algorithms: list[str]
    roles: list[str]
    origins: list[str]
    require_identity: bool


class AppResult(Out):
    app: App


class AppCreated(AppResult):
    """`secret` only when the server generated an HS256 secret: shown this once."""

    secret: str | None = None


class AppList(Out):
    apps: list[App]


class ApiKey(Out):
    id: UUID
    app_id: UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    state: Literal["active", "expired", "revoked"]


class KeyResult(Out):
    key: ApiKey


class KeyCreated(KeyResult):
    secret: str


class KeyRotated(KeyCreated):
    old_key: ApiKey


class KeyList(Out):
    keys: list[ApiKey]


class PlatformUser(Out):
    user: PublicUser
    sub: str
    deactivated: bool


class PlatformUserUpserted(PlatformUser):
    created: bool


class GuestLinked(Out):
    sub: str
    user_id: UUID
    moved: dict[str, int]


class OpenApiDescription(Out):
    """An OpenAPI 3.1 document (this one)."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# ---- webhooks (server/webhooks.py) -------------------------------------------------------

class WebhookEndpoint(Out):
    id: UUID
    app_id: UUID
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime


class WebhookEndpointResult(Out):
    endpoint: WebhookEndpoint


class WebhookEndpointCreated(WebhookEndpointResult):
    secret: str  # whsec_…: shown once


class WebhookEndpointList(Out):
    endpoints: list[WebhookEndpoint]


class WebhookDelivery(Out):
    id: UUID
    webhook_id: str
    endpoint_id: UUID
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    delivered_at: datetime | None


class WebhookDeliveryResult(Out):
    delivery: WebhookDelivery


class WebhookDeliveryList(Out):
    deliveries: list[WebhookDelivery]
