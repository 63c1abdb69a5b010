"""The tutor feature's settings section (`Settings.tutor`), filled in by handlers/settings.py:
the language model, the prompt, per-user limits and answer recovery."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TutorSettings:
    """The AI tutor (see rag/): its model, its prompt, its limits and its recovery."""

    # The language model (server/factories.py builds the ChatModel from these).
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

    # The prompt: recent messages kept, and the token budget for history and passages.
    history_messages: int = 12
    prompt_budget_tokens: int = 3000

    # Per user, "COUNT/SECONDS[,COUNT/SECONDS]" (parsed by handlers/tutor/limits.py); "0" is
    # off. Why these numbers: docs/security.md (far above what a student reading answers does).
    question_limits: str = "10/60,150/3600"
    question_limits_guest: str = "5/60,40/3600"
    session_limits: str = "20/3600"
    session_limits_guest: str = "6/3600"
    escalation_limits: str = "6/3600"
    escalation_limits_guest: str = "3/3600"
    # Deployment-wide: tickets opened for guests (a swarm of fresh guests).
    guest_ticket_limits: str = "30/60"

    # When a retrieved passage counts as relevant: (unrelated, relevant, certain[, text_bonus])
    # cosine similarities per embedder family; None: rag/relevance.py's measured defaults
    # (docs/tutor.md, "Calibrating relevance").
    relevance_hashing: tuple[float, ...] | None = None
    relevance_neural: tuple[float, ...] | None = None
    # A failing model endpoint is logged at once, then at most once per this many seconds.
    model_failure_log_seconds: float = 60.0

    # An answer whose streaming instance stopped touching its row this long ago was abandoned.
    stream_stale_seconds: float = 20.0
    stream_sweep_seconds: float = 5.0

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url or self.llm_api_key)
