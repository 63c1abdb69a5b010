"""Settings, read once from environment variables (the one reader of the environment).

Every setting has an environment variable; docs/configuration.md lists them all. Nothing else in the
code reads the environment, so a test can build a `Settings` by hand and run several
differently configured instances in one process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

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


@dataclass(frozen=True)
class IdentitySettings:
    """Signed identity from embedding platforms (handlers/identity/, docs/integration.md)."""

    # A token whose life (exp - iat, or exp - now without iat) is longer is refused.
    max_token_life_seconds: int = 3600
    # Clock difference allowed between the platform and this server for exp/iat/nbf.
    leeway_seconds: int = 30
    # Lifetime of the Studyhall session token an identity sign-in returns.
    session_hours: int = 24
    # A fetched JWKS is used this long; an unknown `kid` refetches it at most once per
    # `jwks_refresh_seconds`; each fetch may take `jwks_timeout_seconds`.
    jwks_cache_seconds: int = 3600
    jwks_refresh_seconds: int = 60
    jwks_timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls, e: dict[str, str]) -> IdentitySettings:
        d = cls()
        return cls(
            max_token_life_seconds=_int(e, "STUDYHALL_IDENTITY_MAX_LIFE_SECONDS", d.max_token_life_seconds),
            leeway_seconds=_int(e, "STUDYHALL_IDENTITY_LEEWAY_SECONDS", d.leeway_seconds),
            session_hours=_int(e, "STUDYHALL_IDENTITY_SESSION_HOURS", d.session_hours),
            jwks_cache_seconds=_int(e, "STUDYHALL_IDENTITY_JWKS_CACHE_SECONDS", d.jwks_cache_seconds),
            jwks_refresh_seconds=_int(e, "STUDYHALL_IDENTITY_JWKS_REFRESH_SECONDS", d.jwks_refresh_seconds),
            jwks_timeout_seconds=_float(e, "STUDYHALL_IDENTITY_JWKS_TIMEOUT", d.jwks_timeout_seconds),
        )


@dataclass(frozen=True)
class WebhookSettings:
    """Webhooks to platforms (handlers/webhooks/, docs/webhooks.md)."""

    # Targets on private, loopback, link-local, unspecified or multicast addresses are
    # refused unless this is set (tests; a receiver on the same private network).
    allow_private_targets: bool = False
    # Seconds to wait before each retry; after the last one fails the endpoint is disabled.
    # Each delay gets up to ±20 % jitter. Default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 27.6 h).
    retry_schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    # One attempt: connect plus answer.
    timeout_seconds: float = 10.0
    # A claimed delivery is retaken by any instance after this (its claimer died); keep it
    # well above timeout_seconds.
    lease_seconds: float = 60.0
    # Deliveries sent at once per instance.
    concurrency: int = 32
    # Poll for due deliveries this often besides LISTEN/NOTIFY (retries fall due by time).
    poll_seconds: float = 1.0
    # Reload which events anyone subscribes to this often besides the change notifications.
    subscriptions_refresh_seconds: float = 30.0

    @classmethod
    def from_env(cls, e: dict[str, str]) -> WebhookSettings:
        d = cls()
        raw = (e.get("STUDYHALL_WEBHOOK_RETRY_SCHEDULE") or "").strip()
        try:
            schedule = tuple(float(p) for p in raw.split(",") if p.strip()) if raw else d.retry_schedule
        except ValueError as exc:
            raise SystemExit(f"STUDYHALL_WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas, got {raw!r}") from exc
        return cls(
            allow_private_targets=_bool(e, "STUDYHALL_WEBHOOK_ALLOW_PRIVATE_TARGETS", d.allow_private_targets),
            retry_schedule=schedule,
            timeout_seconds=_float(e, "STUDYHALL_WEBHOOK_TIMEOUT", d.timeout_seconds),
            lease_seconds=_float(e, "STUDYHALL_WEBHOOK_LEASE_SECONDS", d.lease_seconds),
            concurrency=_int(e, "STUDYHALL_WEBHOOK_CONCURRENCY", d.concurrency),
            poll_seconds=_float(e, "STUDYHALL_WEBHOOK_POLL_SECONDS", d.poll_seconds),
            subscriptions_refresh_seconds=_float(e, "STUDYHALL_WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS",
                                                 d.subscriptions_refresh_seconds),
        )


@dataclass(frozen=True)
class Settings:
    """Everything an instance needs to know about its deployment."""

    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    # The embedded PostgreSQL's shared_buffers; None: a quarter of memory (storage/embedded.py).
    pg_shared_buffers: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # Socket.IO / Redis channel: instances sharing a Redis and a channel share users.
    redis_channel: str = "studyhall"
    static_dir: Path | None = None
    cors_origins: str = "*"

    # Accounts
    token_ttl_hours: int = 24 * 30
    guest_token_ttl_hours: int = 24 * 7
    lockout_attempts: int = 5
    lockout_minutes: int = 15

    # Limits
    max_frame_bytes: int = 1_000_000
    max_http_body_bytes: int = 1_000_000
    max_upload_bytes: int = 20_000_000
    max_content_bytes: int = 16 * 1024
    rate_limit_per_second: float = 30.0
    rate_limit_burst: int = 60
    presence_grace_seconds: float = 5.0
    fanout: str = "fast"  # "fast": encode-once websocket frames (server/fanout.py); "stock": python-socketio's

    # AI tutor (see rag/)
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = 30.0
    llm_max_attempts: int = 3
    llm_total_timeout_seconds: float = 45.0
    llm_max_tokens: int = 800
    llm_stream_usage: bool = True
    # Extra USD prices per 1M tokens, {"model": [input, output]}, over rag/llm.py's table.
    llm_prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    embedder: str = "hashing"
    embedding_model: str = "text-embedding-3-small"
    embedding_base_url: str | None = None
    embedding_api_key: str | None = None
    embedding_dim: int | None = None
    tutor_history_messages: int = 12
    tutor_prompt_budget_tokens: int = 3000

    # Live rooms and tickets
    room_host_grace_seconds: float = 120.0
    room_leave_grace_seconds: float = 5.0
    ticket_auto_assign: bool = False
    ticket_agent_limit: int = 5
    sla_check_seconds: float = 30.0

    # -- hardening: gateway (socket events) --
    # Events per second (and burst) shared by all of one user's sockets on an instance.
    user_rate_limit_per_second: float = 60.0
    user_rate_limit_burst: int = 120
    # Sockets one user may hold open at once on an instance (0: no cap).
    max_sockets_per_user: int = 20

    # -- hardening: revocation and Redis --
    # The longest a Redis publish or health ping may take before Redis counts as down.
    redis_timeout_seconds: float = 0.5
    # Publishes waiting for Redis, per instance; beyond it the oldest are dropped (clients resync).
    redis_publish_queue: int = 10_000
    # How often each instance checks its own sockets' tokens and roles against the database.
    revocation_sweep_seconds: float = 10.0

    # -- hardening: database crashes --
    # Opening a connection, or waiting for a pooled one, longer than this: `unavailable`.
    db_connect_timeout_seconds: float = 5.0
    # One statement running longer than this: `unavailable` (a frozen server).
    db_command_timeout_seconds: float = 60.0
    # Each instance re-asserts its row and its sockets in the registry this often.
    instance_heartbeat_seconds: float = 10.0
    # After the socket registry was found reset (a crash or failover empties it), no seat,
    # host or presence grace may expire for this long: every instance re-registers meanwhile.
    registry_settle_seconds: float = 30.0

    # -- hardening: process lifecycle --
    # SIGTERM: how long requests still running may take once clients are told to reconnect.
    shutdown_seconds: float = 5.0
    # How often serve checks that its embedded PostgreSQL still runs (and restarts it).
    pg_watch_seconds: float = 1.0
    # How long serve keeps trying to start a lost embedded PostgreSQL before it exits.
    pg_restart_seconds: float = 30.0

    # -- hardening: auth and abuse limits --
    # Addresses/CIDRs of reverse proxies whose X-Forwarded-For is believed (empty: none).
    trusted_proxies: tuple[str, ...] = ()
    # Sign-in routes, per client address (0 turns a limit off); reasoning in docs/security.md.
    guest_limit_10min: int = 60
    guest_limit_day: int = 500
    register_limit_10min: int = 60
    register_limit_day: int = 300
    login_limit_10min: int = 120
    # Failed logins per account across all addresses within lockout_minutes (0: no ceiling).
    lockout_account_attempts: int = 50
    allow_registration: bool = True
    allow_guests: bool = True
    # Guests idle this long are deleted with their data (0: kept forever).
    guest_idle_days: int = 30

    # -- hardening: HTTP edges and disclosure --
    # /metrics: a bearer token that opens it from anywhere (None: no token opens it), and
    # the client addresses/CIDRs that may read it without one (server/metrics_access.py).
    metrics_token: str | None = None
    metrics_allow: str = "127.0.0.1/32,::1/128"
    # One `sync` answer carries at most about this many bytes of messages (complete: false past it).
    sync_max_bytes: int = 1024 * 1024

    # -- hardening: tutor limits and recovery --
    # Per user, "COUNT/SECONDS[,COUNT/SECONDS]" (parsed by handlers/tutor/limits.py); "0" is
    # off. Why these numbers: docs/security.md (far above what a student reading answers does).
    tutor_question_limits: str = "10/60,150/3600"
    tutor_question_limits_guest: str = "5/60,40/3600"
    tutor_session_limits: str = "20/3600"
    tutor_session_limits_guest: str = "6/3600"
    tutor_escalation_limits: str = "6/3600"
    tutor_escalation_limits_guest: str = "3/3600"
    # Deployment-wide: tickets opened for guests (a swarm of fresh guests).
    guest_ticket_limits: str = "30/60"
    # Document extraction caps (a decompression bomb must not fill memory); 0 is off.
    doc_max_text_chars: int = 4_000_000
    doc_max_pages: int = 3000
    doc_max_page_chars: int = 100_000
    doc_max_chunks: int = 10_000
    # An answer whose streaming instance stopped touching its row this long ago was abandoned.
    tutor_stream_stale_seconds: float = 20.0
    tutor_stream_sweep_seconds: float = 5.0

    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON when stderr is not a terminal

    # Signed identity from embedding platforms: its own section.
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    # Webhooks: their own section.
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        d = cls()
        return cls(
            database_url=e.get("DATABASE_URL") or None,
            redis_url=e.get("REDIS_URL") or None,
            data_dir=Path(e["STUDYHALL_DATA_DIR"]) if e.get("STUDYHALL_DATA_DIR") else d.data_dir,
            pg_shared_buffers=_memory_size(e, "STUDYHALL_PG_SHARED_BUFFERS"),
            host=e.get("STUDYHALL_HOST") or d.host,
            port=_int(e, "STUDYHALL_PORT", d.port),
            redis_channel=e.get("STUDYHALL_REDIS_CHANNEL") or d.redis_channel,
            static_dir=Path(e["STUDYHALL_STATIC_DIR"]) if e.get("STUDYHALL_STATIC_DIR") else None,
            cors_origins=e.get("STUDYHALL_CORS_ORIGINS") or d.cors_origins,
            token_ttl_hours=_int(e, "STUDYHALL_TOKEN_TTL_HOURS", d.token_ttl_hours),
            guest_token_ttl_hours=_int(e, "STUDYHALL_GUEST_TOKEN_TTL_HOURS", d.guest_token_ttl_hours),
            lockout_attempts=_int(e, "STUDYHALL_LOCKOUT_ATTEMPTS", d.lockout_attempts),
            lockout_minutes=_int(e, "STUDYHALL_LOCKOUT_MINUTES", d.lockout_minutes),
            rate_limit_per_second=_float(e, "STUDYHALL_RATE_LIMIT", d.rate_limit_per_second),
            rate_limit_burst=_int(e, "STUDYHALL_RATE_BURST", d.rate_limit_burst),
            presence_grace_seconds=_float(e, "STUDYHALL_PRESENCE_GRACE", d.presence_grace_seconds),
            fanout=_choice(e, "STUDYHALL_FANOUT", d.fanout, ("fast", "stock")),
            max_upload_bytes=_int(e, "STUDYHALL_MAX_UPLOAD_BYTES", d.max_upload_bytes),
            llm_base_url=e.get("STUDYHALL_LLM_BASE_URL") or e.get("OPENAI_BASE_URL") or None,
            llm_api_key=e.get("STUDYHALL_LLM_API_KEY") or e.get("OPENAI_API_KEY") or None,
            llm_model=e.get("STUDYHALL_LLM_MODEL") or d.llm_model,
            llm_timeout_seconds=_float(e, "STUDYHALL_LLM_TIMEOUT", d.llm_timeout_seconds),
            llm_max_attempts=_int(e, "STUDYHALL_LLM_MAX_ATTEMPTS", d.llm_max_attempts),
            llm_total_timeout_seconds=_float(e, "STUDYHALL_LLM_TOTAL_TIMEOUT", d.llm_total_timeout_seconds),
            llm_max_tokens=_int(e, "STUDYHALL_LLM_MAX_TOKENS", d.llm_max_tokens),
            llm_stream_usage=_bool(e, "STUDYHALL_LLM_STREAM_USAGE", d.llm_stream_usage),
            llm_prices=_prices(e, "STUDYHALL_LLM_PRICES"),
            embedder=e.get("STUDYHALL_EMBEDDER") or d.embedder,
            embedding_model=e.get("STUDYHALL_EMBEDDING_MODEL") or d.embedding_model,
            embedding_base_url=e.get("STUDYHALL_EMBEDDING_BASE_URL") or None,
            embedding_api_key=e.get("STUDYHALL_EMBEDDING_API_KEY") or None,
            embedding_dim=_int(e, "STUDYHALL_EMBEDDING_DIM", 0) or None,
            tutor_history_messages=_int(e, "STUDYHALL_TUTOR_HISTORY", d.tutor_history_messages),
            tutor_prompt_budget_tokens=_int(e, "STUDYHALL_TUTOR_PROMPT_BUDGET", d.tutor_prompt_budget_tokens),
            room_host_grace_seconds=_float(e, "STUDYHALL_ROOM_HOST_GRACE", d.room_host_grace_seconds),
            room_leave_grace_seconds=_float(e, "STUDYHALL_ROOM_LEAVE_GRACE", d.room_leave_grace_seconds),
            ticket_auto_assign=_bool(e, "STUDYHALL_TICKET_AUTO_ASSIGN", d.ticket_auto_assign),
            ticket_agent_limit=_int(e, "STUDYHALL_TICKET_AGENT_LIMIT", d.ticket_agent_limit),
            sla_check_seconds=_float(e, "STUDYHALL_SLA_CHECK_SECONDS", d.sla_check_seconds),
            # -- hardening: gateway (socket events) --
            user_rate_limit_per_second=_float(e, "STUDYHALL_USER_RATE_LIMIT", d.user_rate_limit_per_second),
            user_rate_limit_burst=_int(e, "STUDYHALL_USER_RATE_BURST", d.user_rate_limit_burst),
            max_sockets_per_user=_int(e, "STUDYHALL_MAX_SOCKETS_PER_USER", d.max_sockets_per_user),

            # -- hardening: revocation and Redis --
            redis_timeout_seconds=_float(e, "STUDYHALL_REDIS_TIMEOUT", d.redis_timeout_seconds),
            redis_publish_queue=_int(e, "STUDYHALL_REDIS_PUBLISH_QUEUE", d.redis_publish_queue),
            revocation_sweep_seconds=_float(e, "STUDYHALL_REVOCATION_SWEEP", d.revocation_sweep_seconds),

            # -- hardening: database crashes --
            db_connect_timeout_seconds=_float(e, "STUDYHALL_DB_CONNECT_TIMEOUT", d.db_connect_timeout_seconds),
            db_command_timeout_seconds=_float(e, "STUDYHALL_DB_COMMAND_TIMEOUT", d.db_command_timeout_seconds),
            instance_heartbeat_seconds=_float(e, "STUDYHALL_HEARTBEAT_SECONDS", d.instance_heartbeat_seconds),
            registry_settle_seconds=_float(e, "STUDYHALL_REGISTRY_SETTLE", d.registry_settle_seconds),

            # -- hardening: process lifecycle --
            shutdown_seconds=_float(e, "STUDYHALL_SHUTDOWN_SECONDS", d.shutdown_seconds),
            pg_watch_seconds=_float(e, "STUDYHALL_PG_WATCH_SECONDS", d.pg_watch_seconds),
            pg_restart_seconds=_float(e, "STUDYHALL_PG_RESTART_SECONDS", d.pg_restart_seconds),

            # -- hardening: auth and abuse limits --
            trusted_proxies=tuple(
                p.strip() for p in (e.get("STUDYHALL_TRUSTED_PROXIES") or "").split(",") if p.strip()
            ),
            guest_limit_10min=_int(e, "STUDYHALL_GUEST_LIMIT_10MIN", d.guest_limit_10min),
            guest_limit_day=_int(e, "STUDYHALL_GUEST_LIMIT_DAY", d.guest_limit_day),
            register_limit_10min=_int(e, "STUDYHALL_REGISTER_LIMIT_10MIN", d.register_limit_10min),
            register_limit_day=_int(e, "STUDYHALL_REGISTER_LIMIT_DAY", d.register_limit_day),
            login_limit_10min=_int(e, "STUDYHALL_LOGIN_LIMIT_10MIN", d.login_limit_10min),
            lockout_account_attempts=_int(e, "STUDYHALL_LOCKOUT_ACCOUNT_ATTEMPTS", d.lockout_account_attempts),
            allow_registration=_bool(e, "STUDYHALL_ALLOW_REGISTRATION", d.allow_registration),
            allow_guests=_bool(e, "STUDYHALL_ALLOW_GUESTS", d.allow_guests),
            guest_idle_days=_int(e, "STUDYHALL_GUEST_IDLE_DAYS", d.guest_idle_days),

            # -- hardening: HTTP edges and disclosure --
            metrics_token=e.get("STUDYHALL_METRICS_TOKEN") or None,
            metrics_allow=_networks(e, "STUDYHALL_METRICS_ALLOW", d.metrics_allow),
            sync_max_bytes=max(64 * 1024, _int(e, "STUDYHALL_SYNC_MAX_BYTES", d.sync_max_bytes)),

            # -- hardening: tutor limits and recovery --
            tutor_question_limits=e.get("STUDYHALL_TUTOR_QUESTION_LIMITS") or d.tutor_question_limits,
            tutor_question_limits_guest=e.get("STUDYHALL_TUTOR_QUESTION_LIMITS_GUEST") or d.tutor_question_limits_guest,
            tutor_session_limits=e.get("STUDYHALL_TUTOR_SESSION_LIMITS") or d.tutor_session_limits,
            tutor_session_limits_guest=e.get("STUDYHALL_TUTOR_SESSION_LIMITS_GUEST") or d.tutor_session_limits_guest,
            tutor_escalation_limits=e.get("STUDYHALL_TUTOR_ESCALATION_LIMITS") or d.tutor_escalation_limits,
            tutor_escalation_limits_guest=(e.get("STUDYHALL_TUTOR_ESCALATION_LIMITS_GUEST")
                                           or d.tutor_escalation_limits_guest),
            guest_ticket_limits=e.get("STUDYHALL_GUEST_TICKET_LIMITS") or d.guest_ticket_limits,
            doc_max_text_chars=_int(e, "STUDYHALL_DOC_MAX_TEXT_CHARS", d.doc_max_text_chars),
            doc_max_pages=_int(e, "STUDYHALL_DOC_MAX_PAGES", d.doc_max_pages),
            doc_max_page_chars=_int(e, "STUDYHALL_DOC_MAX_PAGE_CHARS", d.doc_max_page_chars),
            doc_max_chunks=_int(e, "STUDYHALL_DOC_MAX_CHUNKS", d.doc_max_chunks),
            tutor_stream_stale_seconds=_float(e, "STUDYHALL_TUTOR_STREAM_STALE_SECONDS", d.tutor_stream_stale_seconds),
            tutor_stream_sweep_seconds=_float(e, "STUDYHALL_TUTOR_STREAM_SWEEP_SECONDS", d.tutor_stream_sweep_seconds),
            log_level=(e.get("STUDYHALL_LOG_LEVEL") or d.log_level).upper(),
            log_json=_bool(e, "STUDYHALL_LOG_JSON", False) if e.get("STUDYHALL_LOG_JSON") else None,
            identity=IdentitySettings.from_env(e),
            webhooks=WebhookSettings.from_env(e),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests run several instances side by side)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url or self.llm_api_key)
