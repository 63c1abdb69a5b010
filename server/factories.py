"""Objects built from settings: each factory reads one section (or two) and builds what a
feature uses, so the classes in handlers/ and rag/ take plain values and never see Settings.

Config flows down: handlers/settings.py reads the environment into sections; these
factories, called by server/ (the app's bind() functions, the command line), turn
sections into objects; handlers get the objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handlers.settings import KnowledgeSettings, RetrievalSettings, Settings
from handlers.tutor.limits import (
    ESCALATION_MESSAGE,
    GUEST_TICKETS_MESSAGE,
    QUESTION_MESSAGE,
    SESSION_MESSAGE,
    RoleRules,
    TutorLimits,
    spec_rules,
)
from handlers.tutor.settings import TutorSettings
from rag.embeddings import Embedder, EmbedderUnavailable, embedder_for_name, make_embedder
from rag.extract import DocumentLimits
from rag.llm import DEFAULT_PRICES, ChatModel, LLMConfig
from rag.retrieval import Fusion, KnowledgeBase
from storage.db import Database

# ---- tutor ------------------------------------------------------------------------------

def chat_model(tutor: TutorSettings) -> ChatModel | None:
    """The tutor's model; None (offline tutor) when no URL or key is configured."""
    if not tutor.llm_configured:
        return None
    config = LLMConfig(
        base_url=tutor.llm_base_url,
        api_key=tutor.llm_api_key or "not-needed",
        model=tutor.llm_model,
        timeout=tutor.llm_timeout_seconds,
        max_attempts=max(1, tutor.llm_max_attempts),
        total_timeout=tutor.llm_total_timeout_seconds,
        max_tokens=tutor.llm_max_tokens,
        stream_usage=tutor.llm_stream_usage,
        prices={**DEFAULT_PRICES, **tutor.llm_prices},
    )
    return ChatModel(config)


def tutor_limits(tutor: TutorSettings) -> TutorLimits:
    """The tutor's limits, built once at start (a bad value stops the start)."""
    return TutorLimits(
        questions=RoleRules(
            spec_rules("tutor-question", tutor.question_limits, "STUDYHALL_TUTOR_QUESTION_LIMITS", QUESTION_MESSAGE),
            spec_rules("tutor-question-guest", tutor.question_limits_guest,
                       "STUDYHALL_TUTOR_QUESTION_LIMITS_GUEST", QUESTION_MESSAGE),
        ),
        sessions=RoleRules(
            spec_rules("tutor-session", tutor.session_limits, "STUDYHALL_TUTOR_SESSION_LIMITS", SESSION_MESSAGE),
            spec_rules("tutor-session-guest", tutor.session_limits_guest,
                       "STUDYHALL_TUTOR_SESSION_LIMITS_GUEST", SESSION_MESSAGE),
        ),
        escalations=RoleRules(
            spec_rules("tutor-escalation", tutor.escalation_limits, "STUDYHALL_TUTOR_ESCALATION_LIMITS",
                       ESCALATION_MESSAGE),
            spec_rules("tutor-escalation-guest", tutor.escalation_limits_guest,
                       "STUDYHALL_TUTOR_ESCALATION_LIMITS_GUEST", ESCALATION_MESSAGE),
        ),
        guest_tickets=spec_rules("guest-tickets", tutor.guest_ticket_limits, "STUDYHALL_GUEST_TICKET_LIMITS",
                                 GUEST_TICKETS_MESSAGE),
    )


# ---- knowledge --------------------------------------------------------------------------

def embedder(knowledge: KnowledgeSettings, tutor: TutorSettings) -> Embedder:
    """The embedder named by STUDYHALL_EMBEDDER; the openai one falls back to the tutor
    model's URL and key."""
    kind = knowledge.embedder
    if kind == "hashing":
        return make_embedder("hashing", **({"dim": knowledge.embedding_dim} if knowledge.embedding_dim else {}))
    if kind == "openai":
        return make_embedder(
            "openai",
            model=knowledge.embedding_model,
            base_url=knowledge.embedding_base_url or tutor.llm_base_url,
            api_key=knowledge.embedding_api_key or tutor.llm_api_key,
            dim=knowledge.embedding_dim,
        )
    options: dict[str, Any] = {}
    if knowledge.embedding_model != KnowledgeSettings.embedding_model:  # an explicit local model path
        options["model_dir" if kind == "onnx" else "model_path"] = knowledge.embedding_model
    return make_embedder(kind, **options)


def previous_embedder(knowledge: KnowledgeSettings, tutor: TutorSettings) -> Callable[[str], Embedder | None]:
    """Rebuilds the active model's embedder from its stored name while the configuration
    names another (a change of model before `studyhall reindex`): built-in models by
    name, an OpenAI-compatible model with this configuration's endpoint."""

    def resolve(name: str) -> Embedder | None:
        if name.startswith("openai:") and "@" not in name:
            try:
                return make_embedder(
                    "openai", model=name.removeprefix("openai:"),
                    base_url=knowledge.embedding_base_url or tutor.llm_base_url,
                    api_key=knowledge.embedding_api_key or tutor.llm_api_key,
                )
            except EmbedderUnavailable:
                return None
        return embedder_for_name(name)

    return resolve


def document_limits(knowledge: KnowledgeSettings) -> DocumentLimits:
    """What one document may expand to (a small PDF can be a decompression bomb)."""
    return DocumentLimits(
        max_text_chars=knowledge.max_text_chars, max_pages=knowledge.max_pages,
        max_page_chars=knowledge.max_page_chars, max_chunks=knowledge.max_chunks,
    )


def fusion(retrieval: RetrievalSettings) -> Fusion:
    """How search fuses its vector and full-text rankings (STUDYHALL_RETRIEVAL_*)."""
    return Fusion(mode=retrieval.mode, vector_weight=retrieval.vector_weight, text_weight=retrieval.text_weight,
                  rrf_k=retrieval.rrf_k, text_budget_ms=retrieval.text_budget_ms)


def knowledge_base(settings: Settings, db: Database) -> KnowledgeBase:
    """The knowledge base: the app builds one at start, each command line tool its own."""
    return KnowledgeBase(
        db, embedder(settings.knowledge, settings.tutor), limits=document_limits(settings.knowledge),
        fusion=fusion(settings.retrieval), resolve=previous_embedder(settings.knowledge, settings.tutor),
    )
