"""decide(), model_cannot_help() and SentinelFilter: positives and negatives in EN/FR/AR."""
from __future__ import annotations

import pytest

from rag.decide import (
    HUMAN,
    NO_MATERIAL,
    NO_MATERIAL_AGAIN,
    RELEVANT,
    SAFETY,
    TOO_VAGUE,
    Decision,
    SentinelFilter,
    decide,
    model_cannot_help,
)
from rag.prompts import CANNOT_HELP

HIT = [{"score": 0.8}]
MISS = [{"score": 0.1}]

ASKS_FOR_PERSON = [
    # English
    "I want to talk to a human",
    "Can I speak to someone please?",
    "talk to a real person",
    "Please connect me with a teacher.",
    "I'd like to speak with an advisor about my grades",
    "Is there a human I can talk to?",
    "I need a real person, this isn't helping",
    "agent",
    "Human please!",
    "I don't want to talk to a bot",
    "Could I chat with your support team?",
    "I want an agent now",
    "Are you a real person?",
    # French
    "Je veux parler à quelqu'un",
    "je voudrais parler à un conseiller",
    "Est-ce que je peux parler à un humain ?",
    "Mettez-moi en relation avec un conseiller s'il vous plaît",
    "Pouvez-vous me passer un professeur ?",
    "j'aimerais parler avec une vraie personne",
    "Je ne veux pas parler à un robot",
    "un humain svp",
    "Je souhaite un conseiller",
    # Arabic
    "أريد التحدث مع شخص",
    "اريد التحدث الى انسان",
    "ممكن أكلم موظف؟",
    "أريد موظف",
    "من فضلك أريد التحدث مع معلم حقيقي",
    "حولني إلى موظف خدمة العملاء",
    "لا أريد التحدث مع روبوت",
    "بدي احكي مع حدا",
    "أُرِيدُ التَّحَدُّثَ مَعَ إِنْسَانٍ",
]

NOT_ASKING_FOR_PERSON = [
    "What is human anatomy?",
    "Explain how the human heart pumps blood",
    "How do agents learn in reinforcement learning?",
    "Who was the teacher of Alexander the Great?",
    "In the story, Emma wants to talk to a teacher.",
    "How do you say 'talk to a teacher' in Spanish?",
    "Is a virus a living person or not?",
    "Quelle est l'anatomie du corps humain ?",
    "Un être humain a combien d'os ?",
    "Le personnage veut parler à un professeur.",
    "Je ne veux parler à personne de mes notes, expliquez-moi juste la dérivée.",
    "ما هو تشريح جسم الإنسان؟",
    "كم عظمة في جسم الإنسان؟",
    "ما هي مهارات التحدث مع الناس؟",
]

SAFETY_MESSAGES = [
    "I want to kill myself",
    "i just want to die",
    "I've been thinking about suicide a lot",
    "I'm suicidal and don't know what to do",
    "I keep cutting myself",
    "My dad hits me when he is drunk",
    "I was sexually abused",
    "I'm going to bring a gun to school tomorrow",
    "I'm going to kill him",
    "Je veux me suicider",
    "j'ai des idées suicidaires",
    "je veux mourir",
    "Mon père... il me frappe tous les soirs",
    "j'ai été agressée",
    "أفكر في الانتحار",
    "أريد أن أموت",
    "أريد أن أقتل نفسي",
    "أبي يضربني كل يوم",
    "سأقتله غدا",
    "سأنتحر الليلة",
]

NOT_SAFETY = [
    "Why did Romeo commit suicide?",
    "Summarize Durkheim's study on suicide rates",
    "Can bacteria kill people?",
    "Why are the plants going to die without light?",
    "This equation is killing me, can you explain it?",
    "Prussia was beaten by Napoleon at Jena",
    "Pourquoi Roméo se suicide-t-il ?",
    "Ce problème va me tuer, expliquez-le-moi",
    "Quelles sont les causes du suicide chez les adolescents selon Durkheim ?",
    "ما أسباب الانتحار عند المراهقين في علم الاجتماع؟",
    "لماذا انتحر روميو؟",
    "سأقتل الوقت بالمذاكرة",
]


@pytest.mark.parametrize("text", ASKS_FOR_PERSON)
def test_request_for_a_person_escalates(text: str) -> None:
    decision = decide(text, [], HIT)
    assert (decision.action, decision.reason, decision.category) == ("escalate", HUMAN, "human_request")
    assert decision.urgent is False


@pytest.mark.parametrize("text", NOT_ASKING_FOR_PERSON)
def test_topics_about_people_are_answered(text: str) -> None:
    decision = decide(text, [], HIT)
    assert (decision.action, decision.reason) == ("answer", RELEVANT)


@pytest.mark.parametrize("text", SAFETY_MESSAGES)
def test_safety_signals_escalate_urgently(text: str) -> None:
    decision = decide(text, [], HIT)
    assert decision == Decision("escalate", SAFETY, decision.confidence, "safety", urgent=True)


@pytest.mark.parametrize("text", NOT_SAFETY)
def test_lessons_about_hard_topics_are_not_safety_escalations(text: str) -> None:
    assert decide(text, [], HIT).action == "answer"


def test_safety_wins_over_everything() -> None:
    decision = decide("I want to talk to a human, I want to kill myself", [], MISS)
    assert decision.category == "safety" and decision.urgent


@pytest.mark.parametrize("text", ["hi", "help", "?", "ok", "Bonjour", "aide", "مرحبا", "   ", "👍"])
def test_vague_messages_ask_for_clarification(text: str) -> None:
    decision = decide(text, [], HIT)
    assert (decision.action, decision.reason) == ("clarify", TOO_VAGUE)


def test_short_message_is_fine_when_material_matches() -> None:
    assert decide("photosynthesis?", [], HIT).action == "answer"
    assert decide("photosynthesis?", [], MISS).action == "clarify"


def test_no_material_twice_in_a_row_escalates() -> None:
    question = "What did the lecturer say about quantum tunnelling in chips?"
    first = decide(question, [], MISS)
    assert (first.action, first.reason, first.category) == ("answer", NO_MATERIAL, "no_results")
    second = decide("And what about superconductors at room temperature?", [first], [])
    assert (second.action, second.reason, second.category) == ("escalate", NO_MATERIAL_AGAIN, "no_results")
    # previous decision may come back from the database as a dict
    assert decide(question, [first.as_dict()], MISS).action == "escalate"
    # a relevant answer in between resets the count
    between = decide("Explain photosynthesis", [first], HIT)
    assert between.action == "answer"
    assert decide(question, [first, between], MISS).action == "answer"


def test_min_relevance_is_configurable_and_objects_with_score_work() -> None:
    class Hit:
        score = 0.5

    assert decide("Explain photosynthesis in plants", [], [Hit()]).reason == RELEVANT
    assert decide("Explain photosynthesis in plants", [], [Hit()], min_relevance=0.6).reason == NO_MATERIAL


@pytest.mark.parametrize(
    "answer",
    [
        CANNOT_HELP,
        f"  {CANNOT_HELP}\n",
        "I'm sorry, but I cannot help with that.",
        "Je ne peux pas vous aider avec cela.",
        "عذرا، لا أستطيع مساعدتك في هذا.",
    ],
)
def test_model_cannot_help_is_detected(answer: str) -> None:
    assert model_cannot_help(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Photosynthesis converts light into chemical energy [1].",
        "I can't help noticing you mixed up mitosis and meiosis: mitosis makes two identical "
        "cells, while meiosis makes four gametes with half the chromosomes [2]. " * 2,
        "La dérivée mesure la variation instantanée [1].",
    ],
)
def test_real_answers_are_not_refusals(answer: str) -> None:
    assert not model_cannot_help(answer)


def test_sentinel_filter_hides_the_sentinel_and_passes_answers() -> None:
    hidden = SentinelFilter()
    out = "".join(hidden.feed(d) for d in ["I_", "CANNOT", "_HE", "LP"]) + hidden.flush()
    assert out == "" and hidden.triggered

    shown = SentinelFilter()
    deltas = ["I", " think", " photosynthesis", " is [1]."]
    out = "".join(shown.feed(d) for d in deltas) + shown.flush()
    assert out == "I think photosynthesis is [1]." and not shown.triggered

    short = SentinelFilter()  # an answer that is a prefix of the sentinel is not lost
    assert short.feed("I") == "" and short.flush() == "I" and not short.triggered
