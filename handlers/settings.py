"""Settings, read once from environment variables (the one reader of the environment).

Every setting has an environment variable; docs/configuration.md lists them all. Nothing else in the
code reads the environment, so a test can build a `Settings` by hand and run several
differently configured instances in one process.

`Settings` is made of small frozen sections, one per feature and a few general ones
(`settings.rooms.leave_grace_seconds`, `settings.database.url`). A feature package declares
its own section (handlers/tutor/settings.py, handlers/rooms/settings.py,
handlers/tickets/settings.py, handlers/webhooks/settings.py); the features that are single modules (and identity, whose
package cannot be imported from here), and the general sections, are declared here. Only `Settings.from_env` below reads the environment: it
names every variable and fills every section. Config flows down: server/ hands each
feature its section, and server/factories.py builds objects (the model, the knowledge
base, the tutor's limits) from sections; a handler never reads another feature's section.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from handlers.rooms.settings import RoomSettings
from handlers.tickets.settings import TicketSettings
from handlers.tutor.settings import TutorSettings
from handlers.webhooks.settings import WebhookSettings
from rag.relevance import Thresholds
from storage.embedded import valid_memory_size


def default_data_dir() -> Path:
    """Per-user data directory: XDG data home for users, /var/lib for root.

    Root gets /var/lib/studyhall because the embedded PostgreSQL must run as an
    unprivileged system user, which cannot traverse /root without opening it up.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/studyhall")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "studyhall"


N = TypeVar("N", int, float)


def _number(env: dict[str, str], name: str, default: N, kind: type[N]) -> N:
    """An int or float setting; a bad value stops the start with the variable's name."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        what = "a whole number" if kind is int else "a number"
        raise SystemExit(f"{name} must be {what}, got {raw!r}") from exc


def _int(env: dict[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int)


def _float(env: dict[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float)


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in allowed:
        raise SystemExit(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _memory_size(env: dict[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if raw and not valid_memory_size(raw):
        raise SystemExit(f"{name} must be a PostgreSQL memory size like 512MB or 2GB, got {raw!r}")
    return raw or None


def _prices(env: dict[str, str], name: str) -> dict[str, tuple[float, float]]:
    raw = env.get(name)
    if not raw:
        return {}
    try:
        return {model: (float(pair[0]), float(pair[1])) for model, pair in json.loads(raw).items()}
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise SystemExit(f'{name} must be JSON like {{"model": [input_usd, output_usd]}}, got {raw!r}') from exc


def _networks(env: dict[str, str], name: str, default: str) -> str:
    """A comma-separated list of IP addresses or CIDRs, checked at start ("" allows none)."""
    import ipaddress

    raw = env.get(name)
    if raw is None:
        return default
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise SystemExit(f"{name} must be IP addresses or CIDRs separated by commas, got {item!r}") from exc
    return raw


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _thresholds(env: dict[str, str], name: str, default: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """"UNRELATED,RELEVANT,CERTAIN[,TEXT_BONUS]" cosine thresholds (rag/relevance.py),
    checked at start (rising, bonus 0..0.5)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        values = tuple(float(p) for p in raw.split(","))
        if len(values) not in (3, 4):
            raise ValueError("three or four numbers")
        Thresholds(*values)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"{name} must be rising cosines UNRELATED,RELEVANT,CERTAIN[,TEXT_BONUS], got {raw!r}") from exc
    return values


def _seconds_list(env: dict[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return tuple(float(p) for p in raw.split(",") if p.strip())
    except ValueError as exc:
        raise SystemExit(f"{name} must be seconds separated by commas, got {raw!r}") from exc


def _retrieval(env: dict[str, str], default: RetrievalSettings) -> RetrievalSettings:
    """The fusion settings; weights that select nothing stop the start with the names."""
    section = RetrievalSettings(
        mode=_choice(env, "STUDYHALL_RETRIEVAL_MODE", default.mode, ("hybrid", "vector", "text")),
        vector_weight=_float(env, "STUDYHALL_RETRIEVAL_VECTOR_WEIGHT", default.vector_weight),
        text_weight=_float(env, "STUDYHALL_RETRIEVAL_TEXT_WEIGHT", default.text_weight),
        rrf_k=_int(env, "STUDYHALL_RETRIEVAL_RRF_K", default.rrf_k),
        text_budget_ms=_int(env, "STUDYHALL_RETRIEVAL_TEXT_BUDGET_MS", default.text_budget_ms),
    )
    if section.vector_weight < 0 or section.text_weight < 0 or section.vector_weight + section.text_weight <= 0:
        raise SystemExit("STUDYHALL_RETRIEVAL_VECTOR_WEIGHT and STUDYHALL_RETRIEVAL_TEXT_WEIGHT must be >= 0, "
                         f"not both 0; got {section.vector_weight:g} and {section.text_weight:g}")
    if section.rrf_k < 1:
        raise SystemExit(f"STUDYHALL_RETRIEVAL_RRF_K must be at least 1, got {section.rrf_k}")
    if section.text_budget_ms < 0:
        raise SystemExit(f"STUDYHALL_RETRIEVAL_TEXT_BUDGET_MS must be >= 0, got {section.text_budget_ms}")
    return section


# ---- general sections ----------------------------------------------------------------

@dataclass(frozen=True)
class HttpSettings:
    """Where and how the server listens, and what its HTTP edges accept."""

    host: str = "127.0.0.1"
    port: int = 8080
    static_dir: Path | None = None
    # Origins allowed for Socket.IO and the HTTP API (comma-separated), for the widget.
    cors_origins: str = "*"
    max_body_bytes: int = 1_000_000
    # Addresses/CIDRs of reverse proxies whose X-Forwarded-For is believed (empty: none).
    trusted_proxies: tuple[str, ...] = ()
    # /metrics: a bearer token that opens it from anywhere (None: no token opens it), and
    # the client addresses/CIDRs that may read it without one (server/metrics_access.py).
    metrics_token: str | None = None
    metrics_allow: str = "127.0.0.1/32,::1/128"
    # SIGTERM: how long requests still running may take once clients are told to reconnect.
    shutdown_seconds: float = 5.0


@dataclass(frozen=True)
class GatewaySettings:
    """Socket.IO: frames, per-socket and per-user event limits, and broadcast delivery."""

    max_frame_bytes: int = 1_000_000
    rate_limit_per_second: float = 30.0
    rate_limit_burst: int = 60
    # Events per second (and burst) shared by all of one user's sockets on an instance.
    user_rate_limit_per_second: float = 60.0
    user_rate_limit_burst: int = 120
    # Sockets one user may hold open at once on an instance (0: no cap).
    max_sockets_per_user: int = 20
    fanout: str = "fast"  # "fast": encode-once websocket frames (server/fanout.py); "stock": python-socketio's
    # permessage-deflate for clients that offer it: off, as in Node's socket.io (about 100 KiB
    # more per idle socket and more CPU per frame when on; server/ws_deflate.py).
    websocket_deflate: bool = False


@dataclass(frozen=True)
class DatabaseSettings:
    """PostgreSQL: an external one (url) or the embedded one, and how long to wait for it."""

    url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    # The embedded PostgreSQL's shared_buffers; None: a quarter of memory (storage/embedded.py).
    pg_shared_buffers: str | None = None
    # Opening a connection, or waiting for a pooled one, longer than this: `unavailable`.
    connect_timeout_seconds: float = 5.0
    # One statement running longer than this: `unavailable` (a frozen server).
    command_timeout_seconds: float = 60.0
    # How often serve checks that its embedded PostgreSQL still runs (and restarts it).
    pg_watch_seconds: float = 1.0
    # How long serve keeps trying to start a lost embedded PostgreSQL before it exits.
    pg_restart_seconds: float = 30.0


@dataclass(frozen=True)
class ClusterSettings:
    """Several instances: Redis, and the socket registry they share in the database."""

    # `redis://host:port/0` for one Redis; `redis+cluster://host:port[,host:port...]` (or
    # `rediss+cluster://`) for a Redis Cluster, the scheme the `limits` library also reads:
    # any reachable node is enough to find the others (server/rediscluster.py).
    redis_url: str | None = None
    # Socket.IO / Redis channel: instances sharing a Redis and a channel share users.
    redis_channel: str = "studyhall"
    # "room": each Socket.IO room has its own sharded channel (SPUBLISH/SSUBSCRIBE) and an
    # instance hears only the rooms its sockets are in; "single": every event on one channel
    # that every instance hears (python-socketio's design; kept to measure against).
    redis_channels: str = "room"
    # With room channels, an emit to more rooms than this (a big group's message goes to each
    # member's room) is published once on the global channel instead: r room copies cost more
    # than one copy to each of n instances once r > n. Set it near the number of instances.
    redis_room_emit_limit: int = 16
    # The longest a Redis publish or health ping may take before Redis counts as down.
    redis_timeout_seconds: float = 0.5
    # Publishes waiting for Redis, per instance; beyond it the oldest are dropped (clients resync).
    redis_publish_queue: int = 10_000
    # Each instance re-asserts its row and its sockets in the registry this often.
    instance_heartbeat_seconds: float = 10.0
    # After the socket registry was found reset (a crash or failover empties it), no seat,
    # host or presence grace may expire for this long: every instance re-registers meanwhile.
    registry_settle_seconds: float = 30.0

    @property
    def redis_cluster(self) -> bool:
        """REDIS_URL names a Redis Cluster (its scheme ends in `+cluster`)."""
        return is_cluster_url(self.redis_url)


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and str(url).split("://", 1)[0].lower() in CLUSTER_SCHEMES


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    json: bool | None = None  # None: JSON when stderr is not a terminal


# ---- sections of features that are single modules ------------------------------------
# (a feature package declares its own, handlers/<feature>/settings.py; identity is the
# exception, see IdentitySettings)

@dataclass(frozen=True)
class AuthSettings:
    """Sign-in (handlers/auth.py, handlers/signin_limits.py), tokens, lockouts and guests."""

    token_ttl_hours: int = 24 * 30
    guest_token_ttl_hours: int = 24 * 7
    lockout_attempts: int = 5
    lockout_minutes: int = 15
    # Failed logins per account across all addresses within lockout_minutes (0: no ceiling).
    lockout_account_attempts: int = 50
    # Sign-in routes, per client address (0 turns a limit off); reasoning in docs/security.md.
    guest_limit_10min: int = 60
    guest_limit_day: int = 500
    register_limit_10min: int = 60
    register_limit_day: int = 300
    login_limit_10min: int = 120
    allow_registration: bool = True
    allow_guests: bool = True
    # Guests idle this long are deleted with their data (0: kept forever).
    guest_idle_days: int = 30
    # How often each instance checks its own sockets' tokens and roles against the database.
    revocation_sweep_seconds: float = 10.0


@dataclass(frozen=True)
class PresenceSettings:
    # Seconds after a user's last socket closes before others see them offline.
    grace_seconds: float = 5.0


@dataclass(frozen=True)
class ThreadSettings:
    """Message threads (handlers/threads.py)."""

    max_content_bytes: int = 16 * 1024
    # One `sync` answer carries at most about this many bytes of messages (complete: false past it).
    sync_max_bytes: int = 1024 * 1024
    # Group conversations fan out to one room their members' sockets are in (handlers/grouprooms.py):
    # one publish reaches the instances hosting members. Off: to each member's own room (the old way).
    group_rooms: bool = True
    # A new group's events also go to its members' own rooms this long, while the notice that
    # makes their sockets enter reaches every instance (longer than one periodic check).
    group_room_settle_seconds: float = 20.0


@dataclass(frozen=True)
class KnowledgeSettings:
    """Documents and their embeddings (handlers/knowledge.py, rag/)."""

    # `onnx`: all-MiniLM-L6-v2 on onnxruntime, offline (docs/tutor.md); `hashing` for tiny installs.
    embedder: str = "onnx"
    embedding_model: str = "text-embedding-3-small"
    # Unset: the openai embedder uses the tutor's llm_base_url / llm_api_key (server/factories.py).
    embedding_base_url: str | None = None
    embedding_api_key: str | None = None
    embedding_dim: int | None = None
    max_upload_bytes: int = 20_000_000
    # Document extraction caps (a decompression bomb must not fill memory); 0 is off.
    max_text_chars: int = 4_000_000
    max_pages: int = 3000
    max_page_chars: int = 100_000
    max_chunks: int = 10_000


@dataclass(frozen=True)
class IdentitySettings:
    """Signed identity from embedding platforms (handlers/identity/, docs/integration.md).

    Declared here, not in handlers/identity/: that package's __init__ imports its modules,
    which import handlers.core, so a section there could not be composed without a cycle."""

    # A token whose life (exp - iat, or exp - now without iat) is longer is refused.
    max_token_life_seconds: int = 3600
    # Clock difference allowed between the platform and this server for exp/iat/nbf.
    leeway_seconds: int = 30
    # Lifetime of the Studyhall session token an identity sign-in returns.
    session_hours: float = 24  # a fraction is allowed (tests use seconds)
    # A fetched JWKS is used this long; an unknown `kid` refetches it at most once per
    # `jwks_refresh_seconds`; each fetch may take `jwks_timeout_seconds`.
    jwks_cache_seconds: int = 3600
    jwks_refresh_seconds: int = 60
    jwks_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class PlatformSettings:
    """API keys and the platform API for apps' backends (handlers/platform/, docs/integration.md)."""

    # Requests one API key may make per minute (0: no limit); over it, `rate_limited`.
    key_rate_limit_per_minute: int = 600
    # `last_used_at` is written at most once per key per this many seconds.
    key_last_used_resolution_seconds: float = 60.0
    # How long a rotated key keeps working, when the rotation does not say.
    key_rotate_overlap_hours: float = 24.0


@dataclass(frozen=True)
class RetrievalSettings:
    """How search ranks passages (rag/retrieval.py `Fusion`, built in server/factories.py):
    `hybrid` fuses the vector and full-text rankings by weighted RRF; `vector` or `text`
    runs one alone. The defaults were measured with `studyhall eval` (README, "Measuring
    retrieval"); re-measure on your material after changing the embedder."""

    mode: str = "hybrid"
    vector_weight: float = 1.0
    text_weight: float = 1.0
    rrf_k: int = 60
    # Hybrid mode: past this many ms the full-text query is cancelled and that question is
    # ranked by vectors alone, logged and counted (0: no budget; rag/retrieval.py `Fusion`).
    text_budget_ms: int = 20


# ---- all of them -----------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Everything an instance needs to know about its deployment, section by section."""

    http: HttpSettings = field(default_factory=HttpSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    log: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    threads: ThreadSettings = field(default_factory=ThreadSettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    rooms: RoomSettings = field(default_factory=RoomSettings)
    tickets: TicketSettings = field(default_factory=TicketSettings)
    tutor: TutorSettings = field(default_factory=TutorSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    platform: PlatformSettings = field(default_factory=PlatformSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        http, gateway, database, cluster = HttpSettings(), GatewaySettings(), DatabaseSettings(), ClusterSettings()
        log, auth, presence, threads = LogSettings(), AuthSettings(), PresenceSettings(), ThreadSettings()
        knowledge, rooms, tickets, tutor = KnowledgeSettings(), RoomSettings(), TicketSettings(), TutorSettings()
        identity, platform, webhooks = IdentitySettings(), PlatformSettings(), WebhookSettings()
        retrieval = RetrievalSettings()
        return cls(
            http=HttpSettings(
                host=e.get("STUDYHALL_HOST") or http.host,
                port=_int(e, "STUDYHALL_PORT", http.port),
                static_dir=Path(e["STUDYHALL_STATIC_DIR"]) if e.get("STUDYHALL_STATIC_DIR") else None,
                cors_origins=e.get("STUDYHALL_CORS_ORIGINS") or http.cors_origins,
                trusted_proxies=tuple(
                    p.strip() for p in (e.get("STUDYHALL_TRUSTED_PROXIES") or "").split(",") if p.strip()
                ),
                metrics_token=e.get("STUDYHALL_METRICS_TOKEN") or None,
                metrics_allow=_networks(e, "STUDYHALL_METRICS_ALLOW", http.metrics_allow),
                shutdown_seconds=_float(e, "STUDYHALL_SHUTDOWN_SECONDS", http.shutdown_seconds),
            ),
            gateway=GatewaySettings(
                rate_limit_per_second=_float(e, "STUDYHALL_RATE_LIMIT", gateway.rate_limit_per_second),
                rate_limit_burst=_int(e, "STUDYHALL_RATE_BURST", gateway.rate_limit_burst),
                user_rate_limit_per_second=_float(e, "STUDYHALL_USER_RATE_LIMIT", gateway.user_rate_limit_per_second),
                user_rate_limit_burst=_int(e, "STUDYHALL_USER_RATE_BURST", gateway.user_rate_limit_burst),
                max_sockets_per_user=_int(e, "STUDYHALL_MAX_SOCKETS_PER_USER", gateway.max_sockets_per_user),
                fanout=_choice(e, "STUDYHALL_FANOUT", gateway.fanout, ("fast", "stock")),
                websocket_deflate=_bool(e, "STUDYHALL_WS_DEFLATE", gateway.websocket_deflate),
            ),
            database=DatabaseSettings(
                url=e.get("DATABASE_URL") or None,
                data_dir=Path(e["STUDYHALL_DATA_DIR"]) if e.get("STUDYHALL_DATA_DIR") else database.data_dir,
                pg_shared_buffers=_memory_size(e, "STUDYHALL_PG_SHARED_BUFFERS"),
                connect_timeout_seconds=_float(e, "STUDYHALL_DB_CONNECT_TIMEOUT", database.connect_timeout_seconds),
                command_timeout_seconds=_float(e, "STUDYHALL_DB_COMMAND_TIMEOUT", database.command_timeout_seconds),
                pg_watch_seconds=_float(e, "STUDYHALL_PG_WATCH_SECONDS", database.pg_watch_seconds),
                pg_restart_seconds=_float(e, "STUDYHALL_PG_RESTART_SECONDS", database.pg_restart_seconds),
            ),
            cluster=ClusterSettings(
                redis_url=e.get("REDIS_URL") or None,
                redis_channel=e.get("STUDYHALL_REDIS_CHANNEL") or cluster.redis_channel,
                redis_channels=_choice(e, "STUDYHALL_REDIS_CHANNELS", cluster.redis_channels, ("room", "single")),
                redis_room_emit_limit=_int(e, "STUDYHALL_REDIS_ROOM_EMIT_LIMIT", cluster.redis_room_emit_limit),
                redis_timeout_seconds=_float(e, "STUDYHALL_REDIS_TIMEOUT", cluster.redis_timeout_seconds),
                redis_publish_queue=_int(e, "STUDYHALL_REDIS_PUBLISH_QUEUE", cluster.redis_publish_queue),
                instance_heartbeat_seconds=_float(e, "STUDYHALL_HEARTBEAT_SECONDS", cluster.instance_heartbeat_seconds),
                registry_settle_seconds=_float(e, "STUDYHALL_REGISTRY_SETTLE", cluster.registry_settle_seconds),
            ),
            log=LogSettings(
                level=(e.get("STUDYHALL_LOG_LEVEL") or log.level).upper(),
                json=_bool(e, "STUDYHALL_LOG_JSON", False) if e.get("STUDYHALL_LOG_JSON") else None,
            ),
            auth=AuthSettings(
                token_ttl_hours=_int(e, "STUDYHALL_TOKEN_TTL_HOURS", auth.token_ttl_hours),
                guest_token_ttl_hours=_int(e, "STUDYHALL_GUEST_TOKEN_TTL_HOURS", auth.guest_token_ttl_hours),
                lockout_attempts=_int(e, "STUDYHALL_LOCKOUT_ATTEMPTS", auth.lockout_attempts),
                lockout_minutes=_int(e, "STUDYHALL_LOCKOUT_MINUTES", auth.lockout_minutes),
                lockout_account_attempts=_int(e, "STUDYHALL_LOCKOUT_ACCOUNT_ATTEMPTS", auth.lockout_account_attempts),
                guest_limit_10min=_int(e, "STUDYHALL_GUEST_LIMIT_10MIN", auth.guest_limit_10min),
                guest_limit_day=_int(e, "STUDYHALL_GUEST_LIMIT_DAY", auth.guest_limit_day),
                register_limit_10min=_int(e, "STUDYHALL_REGISTER_LIMIT_10MIN", auth.register_limit_10min),
                register_limit_day=_int(e, "STUDYHALL_REGISTER_LIMIT_DAY", auth.register_limit_day),
                login_limit_10min=_int(e, "STUDYHALL_LOGIN_LIMIT_10MIN", auth.login_limit_10min),
                allow_registration=_bool(e, "STUDYHALL_ALLOW_REGISTRATION", auth.allow_registration),
                allow_guests=_bool(e, "STUDYHALL_ALLOW_GUESTS", auth.allow_guests),
                guest_idle_days=_int(e, "STUDYHALL_GUEST_IDLE_DAYS", auth.guest_idle_days),
                revocation_sweep_seconds=_float(e, "STUDYHALL_REVOCATION_SWEEP", auth.revocation_sweep_seconds),
            ),
            presence=PresenceSettings(
                grace_seconds=_float(e, "STUDYHALL_PRESENCE_GRACE", presence.grace_seconds),
            ),
            threads=ThreadSettings(
                sync_max_bytes=max(64 * 1024, _int(e, "STUDYHALL_SYNC_MAX_BYTES", threads.sync_max_bytes)),
                group_rooms=_bool(e, "STUDYHALL_GROUP_ROOMS", threads.group_rooms),
                group_room_settle_seconds=max(0.0, _float(e, "STUDYHALL_GROUP_ROOM_SETTLE",
                                                          threads.group_room_settle_seconds)),
            ),
            knowledge=KnowledgeSettings(
                embedder=e.get("STUDYHALL_EMBEDDER") or knowledge.embedder,
                embedding_model=e.get("STUDYHALL_EMBEDDING_MODEL") or knowledge.embedding_model,
                embedding_base_url=e.get("STUDYHALL_EMBEDDING_BASE_URL") or None,
                embedding_api_key=e.get("STUDYHALL_EMBEDDING_API_KEY") or None,
                embedding_dim=_int(e, "STUDYHALL_EMBEDDING_DIM", 0) or None,
                max_upload_bytes=_int(e, "STUDYHALL_MAX_UPLOAD_BYTES", knowledge.max_upload_bytes),
                max_text_chars=_int(e, "STUDYHALL_DOC_MAX_TEXT_CHARS", knowledge.max_text_chars),
                max_pages=_int(e, "STUDYHALL_DOC_MAX_PAGES", knowledge.max_pages),
                max_page_chars=_int(e, "STUDYHALL_DOC_MAX_PAGE_CHARS", knowledge.max_page_chars),
                max_chunks=_int(e, "STUDYHALL_DOC_MAX_CHUNKS", knowledge.max_chunks),
            ),
            rooms=RoomSettings(
                host_grace_seconds=_float(e, "STUDYHALL_ROOM_HOST_GRACE", rooms.host_grace_seconds),
                leave_grace_seconds=_float(e, "STUDYHALL_ROOM_LEAVE_GRACE", rooms.leave_grace_seconds),
            ),
            tickets=TicketSettings(
                auto_assign=_bool(e, "STUDYHALL_TICKET_AUTO_ASSIGN", tickets.auto_assign),
                agent_limit=_int(e, "STUDYHALL_TICKET_AGENT_LIMIT", tickets.agent_limit),
                sla_check_seconds=_float(e, "STUDYHALL_SLA_CHECK_SECONDS", tickets.sla_check_seconds),
            ),
            tutor=TutorSettings(
                llm_base_url=e.get("STUDYHALL_LLM_BASE_URL") or e.get("OPENAI_BASE_URL") or None,
                llm_api_key=e.get("STUDYHALL_LLM_API_KEY") or e.get("OPENAI_API_KEY") or None,
                llm_model=e.get("STUDYHALL_LLM_MODEL") or tutor.llm_model,
                llm_timeout_seconds=_float(e, "STUDYHALL_LLM_TIMEOUT", tutor.llm_timeout_seconds),
                llm_max_attempts=_int(e, "STUDYHALL_LLM_MAX_ATTEMPTS", tutor.llm_max_attempts),
                llm_total_timeout_seconds=_float(e, "STUDYHALL_LLM_TOTAL_TIMEOUT", tutor.llm_total_timeout_seconds),
                llm_max_tokens=_int(e, "STUDYHALL_LLM_MAX_TOKENS", tutor.llm_max_tokens),
                llm_stream_usage=_bool(e, "STUDYHALL_LLM_STREAM_USAGE", tutor.llm_stream_usage),
                llm_prices=_prices(e, "STUDYHALL_LLM_PRICES"),
                history_messages=_int(e, "STUDYHALL_TUTOR_HISTORY", tutor.history_messages),
                prompt_budget_tokens=_int(e, "STUDYHALL_TUTOR_PROMPT_BUDGET", tutor.prompt_budget_tokens),
                question_limits=e.get("STUDYHALL_TUTOR_QUESTION_LIMITS") or tutor.question_limits,
                question_limits_guest=e.get("STUDYHALL_TUTOR_QUESTION_LIMITS_GUEST") or tutor.question_limits_guest,
                session_limits=e.get("STUDYHALL_TUTOR_SESSION_LIMITS") or tutor.session_limits,
                session_limits_guest=e.get("STUDYHALL_TUTOR_SESSION_LIMITS_GUEST") or tutor.session_limits_guest,
                escalation_limits=e.get("STUDYHALL_TUTOR_ESCALATION_LIMITS") or tutor.escalation_limits,
                escalation_limits_guest=(e.get("STUDYHALL_TUTOR_ESCALATION_LIMITS_GUEST")
                                         or tutor.escalation_limits_guest),
                guest_ticket_limits=e.get("STUDYHALL_GUEST_TICKET_LIMITS") or tutor.guest_ticket_limits,
                relevance_hashing=_thresholds(e, "STUDYHALL_TUTOR_RELEVANCE_HASHING", tutor.relevance_hashing),
                relevance_neural=_thresholds(e, "STUDYHALL_TUTOR_RELEVANCE_NEURAL", tutor.relevance_neural),
                model_failure_log_seconds=_float(e, "STUDYHALL_TUTOR_MODEL_FAILURE_LOG_SECONDS",
                                                 tutor.model_failure_log_seconds),
                stream_stale_seconds=_float(e, "STUDYHALL_TUTOR_STREAM_STALE_SECONDS", tutor.stream_stale_seconds),
                stream_sweep_seconds=_float(e, "STUDYHALL_TUTOR_STREAM_SWEEP_SECONDS", tutor.stream_sweep_seconds),
            ),
            identity=IdentitySettings(
                max_token_life_seconds=_int(e, "STUDYHALL_IDENTITY_MAX_LIFE_SECONDS", identity.max_token_life_seconds),
                leeway_seconds=_int(e, "STUDYHALL_IDENTITY_LEEWAY_SECONDS", identity.leeway_seconds),
                session_hours=_float(e, "STUDYHALL_IDENTITY_SESSION_HOURS", identity.session_hours),
                jwks_cache_seconds=_int(e, "STUDYHALL_IDENTITY_JWKS_CACHE_SECONDS", identity.jwks_cache_seconds),
                jwks_refresh_seconds=_int(e, "STUDYHALL_IDENTITY_JWKS_REFRESH_SECONDS", identity.jwks_refresh_seconds),
                jwks_timeout_seconds=_float(e, "STUDYHALL_IDENTITY_JWKS_TIMEOUT", identity.jwks_timeout_seconds),
            ),
            platform=PlatformSettings(
                key_rate_limit_per_minute=_int(e, "STUDYHALL_API_KEY_RATE_LIMIT", platform.key_rate_limit_per_minute),
                key_last_used_resolution_seconds=_float(e, "STUDYHALL_API_KEY_LAST_USED_RESOLUTION",
                                                        platform.key_last_used_resolution_seconds),
                key_rotate_overlap_hours=_float(e, "STUDYHALL_API_KEY_ROTATE_OVERLAP_HOURS",
                                                platform.key_rotate_overlap_hours),
            ),
            webhooks=WebhookSettings(
                allow_private_targets=_bool(e, "STUDYHALL_WEBHOOK_ALLOW_PRIVATE_TARGETS", webhooks.allow_private_targets),
                retry_schedule=_seconds_list(e, "STUDYHALL_WEBHOOK_RETRY_SCHEDULE", webhooks.retry_schedule),
                timeout_seconds=_float(e, "STUDYHALL_WEBHOOK_TIMEOUT", webhooks.timeout_seconds),
                lease_seconds=_float(e, "STUDYHALL_WEBHOOK_LEASE_SECONDS", webhooks.lease_seconds),
                concurrency=_int(e, "STUDYHALL_WEBHOOK_CONCURRENCY", webhooks.concurrency),
                poll_seconds=_float(e, "STUDYHALL_WEBHOOK_POLL_SECONDS", webhooks.poll_seconds),
                busy_poll_seconds=_float(e, "STUDYHALL_WEBHOOK_BUSY_POLL_SECONDS", webhooks.busy_poll_seconds),
                idle_seconds=_float(e, "STUDYHALL_WEBHOOK_IDLE_SECONDS", webhooks.idle_seconds),
                subscriptions_refresh_seconds=_float(e, "STUDYHALL_WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS",
                                                     webhooks.subscriptions_refresh_seconds),
                connections_per_endpoint=_int(e, "STUDYHALL_WEBHOOK_CONNECTIONS_PER_ENDPOINT",
                                              webhooks.connections_per_endpoint),
                dns_cache_seconds=_float(e, "STUDYHALL_WEBHOOK_DNS_CACHE_SECONDS", webhooks.dns_cache_seconds),
                saturated_rate=_float(e, "STUDYHALL_WEBHOOK_SATURATED_RATE", webhooks.saturated_rate),
                saturated_batch_size=_float(e, "STUDYHALL_WEBHOOK_SATURATED_BATCH_SIZE", webhooks.saturated_batch_size),
            ),
            retrieval=_retrieval(e, retrieval),
        )

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (tests run several instances side by side).

        A keyword is a section (`rooms=RoomSettings(...)`) or one setting inside a section,
        its section and name joined by a double underscore: `with_(rooms__leave_grace_seconds=0.5,
        cluster__redis_url=url)`. Flat keywords merge like any dict, which the tests rely on.
        """
        sections = {f.name for f in fields(self)}
        whole: dict[str, Any] = {}
        inner: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section, nested, name = key.partition("__")
            if section not in sections:
                raise TypeError(f"Settings has no section {section!r} (in {key!r})")
            if nested:
                inner.setdefault(section, {})[name] = value
            else:
                whole[section] = value
        for section, values in inner.items():
            whole[section] = replace(whole.get(section, getattr(self, section)), **values)
        return replace(self, **whole)
