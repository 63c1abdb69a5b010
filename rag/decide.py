"""Decide, before calling a model, whether the tutor should answer, ask, or hand over to a person.

Why rules and not a model: this runs on every student message, must be instant, must work
with no model configured, and its safety part must never depend on a service being up.
Patterns cover English, French and Arabic; each pattern family has negative tests.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rag.prompts import CANNOT_HELP
from rag.relevance import RELEVANT as RELEVANT_CONFIDENCE

Action = Literal["answer", "clarify", "escalate"]

# Reason codes (stable strings: the next decision reads the previous one's reason).
SAFETY = "safety_concern"
HUMAN = "human_requested"
NO_MATERIAL = "no_relevant_material"
NO_MATERIAL_AGAIN = "no_relevant_material_again"
TOO_VAGUE = "too_vague"
RELEVANT = "relevant_material"

# Calibrated confidence (rag/relevance.py) below which a passage does not count as relevant.
MIN_RELEVANCE = RELEVANT_CONFIDENCE


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    confidence: float
    category: str | None = None  # "safety" | "human_request" | "no_results" | None
    urgent: bool = False

    def as_dict(self) -> dict[str, object]:
        """For `metadata.decision` and the tickets' decision log."""
        return {
            "action": self.action,
            "reason": self.reason,
            "confidence": self.confidence,
            "category": self.category,
            "urgent": self.urgent,
        }


def _fold(text: str) -> str:
    """Arabic spelling variants to one form (hamza on alef, alef maqsura), tashkeel removed."""
    text = re.sub(r"[\u064B-\u0652\u0640]", "", text)  # tashkeel and tatweel
    return text.translate(str.maketrans("أإآى", "اااي"))


def _rx(*patterns: str) -> re.Pattern[str]:
    """One case-insensitive alternation; Arabic in patterns folded like the input is."""
    return re.compile("|".join(f"(?:{_fold(p)})" for p in patterns), re.IGNORECASE)


# ---- asking for a person ---------------------------------------------------------------
_EN_PERSON = (
    r"(?:human(?:\s+being)?|person|someone|somebody|agent|teacher|tutor|mentor|staff(?:\s+member)?"
    r"|advis[eo]r|counsell?or|representative|rep|operator|instructor|professor|supervisor"
    r"|manager|support(?:\s+team)?)"
)
_EN_DET = r"(?:(?:a|an|the|some|your|one\s+of\s+your|any)\s+)?(?:(?:real|live|actual)\s+)?"
_EN_LEAD = r"(?:^\s*(?:please\s+)?|\b(?:i|i'd|me|we|us|let|can|could|may|please|want|wanna|need|like)\b[^.?!]{0,25}?\b)"
_FR_PERSON = (
    r"(?:humain|conseill[eè]re?|agent|prof(?:esseure?)?|enseignante?|tut(?:eur|rice)"
    r"|format(?:eur|rice)|responsable|op[ée]rat(?:eur|rice)|quelqu'?un|mentor|support"
    r"|(?:une|la|cette)\s+(?:vraie\s+|autre\s+)?personne)"
)
_FR_DET = r"(?:(?:un|une|le|la|l'|des|mon|ma|votre|ton|ta)\s*)?(?:(?:vrai|vraie|[êe]tre)\s+)?"
_FR_LEAD = r"(?:^\s*|\b(?:je|j'|me|m'|moi|nous|veux|voudrais|peux|puis|pouvez|pourrais|svp|pla[iî]t|aimerais|souhaite|souhaiterais|besoin)\b[^.?!]{0,25}?)"
_FR_TRANSFER = r"(?:mettre|mettez|mets|passer|passez|passe|transf[ée]rer|transf[ée]rez|transf[èe]re)"
_AR_PREFIX = r"(?:ب|ل|لل|ال|بال)?"
_AR_PERSON = (
    r"(?:شخص|إنسان|بشر|بشري|موظف|موظفة|معلم|معلمة|مدرس|مدرسة|أستاذ|أستاذة"
    r"|مشرف|مشرفة|مسؤول|مسئول|وكيل|ممثل|مرشد|مرشدة|أحد|حدا|خدمة\s+العملاء|الدعم)"
)
_AR_TALK = (
    r"(?:التحدث|أتحدث|نتحدث|الحديث|التكلم|أتكلم|الكلام|أكلم|نكلم|كلم"
    r"|التواصل|أتواصل|أحكي|احكي|محادثة|مكالمة)"
)
_AR_WANT = (
    r"(?:أريد|أبغى|ابغي|أبي|بدي|عايز|عاوز|أود|ممكن|أرغب|أحتاج"
    r"|هل\s+يمكنني|هل\s+يمكن|هل\s+أستطيع|من\s+فضلك|لو\s+سمحت|أطلب)"
)

_HUMAN_REQUEST = _rx(
    # English
    rf"{_EN_LEAD}(?:talk|speak|chat)\s+(?:to|with)\s+{_EN_DET}{_EN_PERSON}\b(?!\s+(?:anatomy|body|biology|nature|rights|history|in\s+(?:english|french|spanish|arabic|german)))",
    rf"\b(?:connect|transfer|put|pass)\s+me\s+(?:to|with|through\s+to)\s+{_EN_DET}{_EN_PERSON}\b",
    r"\b(?:get|need|want|give)\s+(?:me\s+)?(?:a\s+|an\s+)?(?:real|live|actual)\s+(?:human|person|agent|teacher|tutor)\b",
    r"\b(?:need|want|would\s+like|'d\s+like)\s+(?:a|an)\s+(?:human|person|agent|operator|representative)\s*(?:please|now|instead|asap)?\s*[.!?]*\s*$",
    r"\b(?:are\s+you|am\s+i\s+talking\s+to)\s+(?:a\s+)?(?:real|live|actual)\s+(?:human|person)\b",
    r"\bis\s+there\s+(?:a|any)\s+(?:real\s+)?(?:human|person|teacher|agent|mentor)\b[^.?!]{0,20}\b(?:talk|speak|chat)\b",
    r"\b(?:don'?t|do\s+not)\s+want\s+(?:to\s+(?:talk|speak|chat)\s+(?:to|with)\s+)?(?:a|an|the|this)?\s*(?:bot|robot|ai|machine|chatbot)\b",
    r"^\s*(?:human|agent|operator|representative|real\s+person|escalate)\s*(?:please|pls|now)?\s*[!.?]*\s*$",
    # French
    rf"{_FR_LEAD}\b(?:parler|discuter|m'adresser)\s+(?:à|a|avec)\s+{_FR_DET}{_FR_PERSON}",
    rf"\b{_FR_TRANSFER}[- ](?:moi|me|m')\s*(?:en\s+(?:relation|contact)\s+)?(?:avec|à|a)?\s*{_FR_DET}{_FR_PERSON}",
    rf"\b(?:me|m')\s*{_FR_TRANSFER}\s+(?:en\s+(?:relation|contact)\s+)?(?:avec|à|a)?\s*{_FR_DET}{_FR_PERSON}",
    r"\b(?:je\s+(?:veux|voudrais|souhaite|souhaiterais|aimerais)|j'aimerais)\s+(?:un|une|le|la)\s+(?:vrai\s+|vraie\s+)?(?:humain|conseill[eè]re?|agent|personne|op[ée]rat(?:eur|rice))\b",
    r"\b(?:pas|plus)\s+(?:parler\s+)?(?:à|a|avec)?\s*(?:un|une|le|la|l'|ce|cette)\s*(?:robot|bot|ia|machine|chatbot)\b",
    r"^\s*(?:un\s+)?(?:humain|conseill[eè]re?|agent|vraie\s+personne)\s*(?:svp|s'il\s+vous\s+pla[iî]t|s'il\s+te\s+pla[iî]t)?\s*[!.?]*\s*$",
    # Arabic
    rf"{_AR_WANT}\s+(?:أن\s+)?{_AR_TALK}\s+(?:(?:مع|إلى|ل)\s+)?(?:\S+\s+)?{_AR_PREFIX}{_AR_PERSON}",
    rf"{_AR_WANT}\s+{_AR_PREFIX}(?:موظف|موظفة|إنسان|بشري|بشر|مشرف|مشرفة|وكيل|ممثل|شخص\s+حقيقي|معلم\s+حقيقي|خدمة\s+العملاء)",
    rf"(?:حولني|حولوني|وصلني|أوصلني|تحويلي|توصيلي)\s+(?:(?:مع|إلى|ل|ب)\s*)?{_AR_PREFIX}{_AR_PERSON}",
    r"(?:لا|ما|مش)\s+(?:أريد|بدي|أبغى|عايز)\s+(?:التحدث\s+مع\s+|أكلم\s+)?(?:ال)?(?:روبوت|بوت|آلة|ذكاء\s+اصطناعي)",
)

# ---- safety (first person or explicit, so that lessons *about* these topics pass) --------
_SAFETY = _rx(
    # English: suicide and self-harm
    r"\bkill(?:ing)?\s+my\s*self\b",
    r"\bend(?:ing)?\s+my\s+(?:own\s+)?life\b|\btak(?:e|ing)\s+my\s+(?:own\s+)?life\b",
    r"\bi\s+(?:just\s+|really\s+)?(?:want|wanna|'m\s+going)\s+(?:to\s+)?(?:die|end\s+it\s+all)\b",
    r"\bwish\s+i\s+(?:was|were)\s+dead\b|\bbetter\s+off\s+dead\b|\bno\s+reason\s+to\s+live\b",
    r"\bi\s+(?:don'?t|do\s+not)\s+want\s+to\s+(?:live|be\s+alive|exist)\b",
    r"\b(?:i'?m|i\s+am|i\s+feel|feeling|i'?ve\s+been)\s+(?:so\s+|very\s+|really\s+)?suicidal\b",
    r"\bi(?:\s+have|'?ve\s+(?:been\s+)?(?:having|had))\s+suicidal\s+thoughts\b",
    r"\b(?:thinking|thought|think)\s+(?:about|of)\s+(?:suicide|killing\s+myself|ending\s+my\s+life)\b",
    r"\bi\s+(?:want\s+to|wanna|will|'ll|might|am\s+going\s+to|'m\s+going\s+to)\s+commit\s+suicide\b|\bi\s+(?:attempted|tried)\s+suicide\b",
    r"\b(?:want|wanna|going|thinking\s+(?:about|of)|keep|started|been)\s+(?:to\s+)?(?:hurt(?:ing)?|cut(?:ting)?|harm(?:ing)?|starv(?:e|ing))\s+myself\b",
    r"\bi\s+(?:self[- ]?harm|'?ve\s+been\s+self[- ]?harming|am\s+self[- ]?harming)\b",
    # English: abuse and violence
    r"\b(?:he|she|they|someone|somebody|my\s+\w+)\s+(?:keeps\s+|always\s+)?(?:hits?|hitting|beats?|beating|abuses?|abusing|rapes?|raped|molest\w*|touch(?:es|ed)|hurts?|threatens?|threatened)\s+me\b",
    r"\bi\s+(?:am|was|have\s+been|'ve\s+been|got|'m\s+being|am\s+being)\s+(?:sexually\s+|physically\s+)?(?:abused|assaulted|raped|molested)\b",
    r"\b(?:i'?m\s+going\s+to|i\s+am\s+going\s+to|i\s+(?:will|want\s+to|wanna)|i'll|gonna)\s+(?:kill|shoot|stab|hurt)\s+(?:him|her|them|someone|somebody|everyone|everybody|people|you|my\s+\w+)\b",
    r"\b(?:bring(?:ing)?|take|taking)\s+a\s+(?:gun|knife|weapon)\s+to\s+(?:school|class|campus)\b",
    r"\bshoot\s+up\s+(?:the|my|a)\s+(?:school|class|campus)\b",
    # French
    r"\bme\s+suicider\b|\b(?:veux|vais|voudrais|envie\s+de|pense\s+à|penser\s+à)\s+me\s+(?:tuer|faire\s+du\s+mal|scarifier|mutiler)\b",
    r"\bmettre\s+fin\s+(?:à|a)\s+(?:mes\s+jours|ma\s+vie)\b|\ben\s+finir\s+avec\s+(?:la|ma)\s+vie\b",
    r"\b(?:je\s+veux|envie\s+de|j'ai\s+envie\s+de)\s+mourir\b|\bplus\s+envie\s+de\s+vivre\b",
    r"\bid[ée]es\s+(?:suicidaires|noires)\b|\bje\s+suis\s+suicidaire\b",
    r"\bje\s+(?:pense|songe)\s+(?:au\s+suicide|à\s+me\s+suicider)\b|\bje\s+(?:me\s+)?(?:scarifie|mutile|automutile)\b|\bm'automutile\b",
    r"\b(?:il|elle|ils|elles|on)\s+(?:me|m')\s*(?:frappe|frappent|bat|battent|viole|violent|harc[eè]le|harc[eè]lent|menace|menacent|maltraite|maltraitent)\b",
    r"\b(?:j'ai\s+[ée]t[ée]|je\s+suis|j'[ée]tais)\s+(?:viol[ée]e?|abus[ée]e?|agress[ée]e?|maltrait[ée]e?)\b",
    r"\b(?:je\s+me\s+suis\s+fait|on\s+m'a)\s+(?:agresser|violer|frapper|tabasser)\b|\battouchements\b",
    r"\bje\s+vais\s+(?:le|la|les|vous|te)\s+tuer\b|\btuer\s+(?:quelqu'un|tout\s+le\s+monde)\b",
    r"\b(?:apporter|amener)\s+une\s+arme\b",
    # Arabic
    r"(?:سأنتحر|سوف\s+أنتحر|رح\s+أنتحر|أفكر\s+(?:في|ب)\s*الانتحار|(?:أريد|بدي|أبغى)\s+(?:أن\s+)?(?:أنتحر|الانتحار))",
    r"(?:أقتل|قتل)\s+نفسي|(?:أنهي|إنهاء)\s+حياتي",
    r"(?:أريد|بدي|أبغى|أتمنى)\s+(?:أن\s+)?(?:أموت|الموت)",
    r"(?:لا|ما)\s+(?:أريد|بدي)\s+(?:أن\s+)?أعيش",
    r"(?:أؤذي|أوذي|إيذاء|أجرح|أذية)\s+نفسي",
    r"(?:يضربني|تضربني|يضربونني|يضربوني|يعنفني|يعنفونني|يتحرش\s+بي|تحرش\s+بي|اغتصبني|يغتصبني|يهددني|يهددونني|يعتدي\s+علي)",
    r"(?:سأقتله|سأقتلها|سأقتلهم|سأقتلك|رح\s+أقتله|رح\s+أقتلك|أريد\s+(?:أن\s+)?أقتله|أريد\s+قتله)",
)

_VAGUE = _rx(
    r"^(?:hi|hello|hey|yo|help|help\s+me|please|ok|okay|yes|no|thanks|thank\s+you|idk|\?+|\.+)$",
    r"^(?:bonjour|salut|coucou|aide|aidez-moi|aide-moi|merci|oui|non|d'accord|ok)$",
    r"^(?:مرحبا|السلام\s+عليكم|سلام|أهلا|ساعدني|مساعدة|شكرا|نعم|لا)$",
)

_REFUSALS = _rx(
    r"\b(?:i'?m\s+sorry,?\s+)?(?:but\s+)?i\s+(?:can(?:no|')t|am\s+(?:not\s+able|unable))\s+(?:to\s+)?(?:help|assist)\b",
    r"\bje\s+ne\s+(?:peux|suis)\s+pas\s+(?:en\s+mesure\s+de\s+)?(?:vous\s+|t')?aider\b",
    r"(?:لا\s+(?:أستطيع|يمكنني)|لا\s+أقدر)\s+(?:مساعدتك|المساعدة)",
)


def _normal(text: str) -> str:
    """NFKC, curly apostrophes straightened, Arabic folded, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u02bc", "'")
    return re.sub(r"\s+", " ", _fold(text)).strip()


def _score(result: object) -> float:
    if isinstance(result, Mapping):
        return float(result.get("score") or 0.0)
    return float(getattr(result, "score", 0.0) or 0.0)


def _reason(decision: object) -> str | None:
    if isinstance(decision, Mapping):
        return decision.get("reason")
    return getattr(decision, "reason", None)


def asks_for_person(text: str) -> bool:
    """The student asks to talk to a human (teacher, agent, advisor...)."""
    return bool(_HUMAN_REQUEST.search(_normal(text)))


def safety_concern(text: str) -> bool:
    """Signs of self-harm, suicide, abuse or violence."""
    return bool(_SAFETY.search(_normal(text)))


def is_vague(text: str) -> bool:
    """A greeting, a bare "help", or nothing at all: ask what the student means."""
    normal = _normal(text).lower().strip(" !.,;:")
    return bool(_VAGUE.match(normal)) or not re.search(r"\w{2,}", normal)


def is_short(text: str) -> bool:
    """One or two words: fine when retrieval found material, too little when it did not."""
    normal = _normal(text)
    return len(normal.split()) <= 2 and len(normal) < 20


def decide(
    text: str,
    recent_decisions: Sequence[Decision | Mapping[str, object]],
    retrieval_results: Sequence[object],
    *,
    min_relevance: float = MIN_RELEVANCE,
) -> Decision:
    """What the tutor should do with a student's message.

    `recent_decisions` are this conversation's earlier decisions, oldest first (Decision
    objects or their `as_dict()`); `retrieval_results` are search hits with a `score`
    (objects or dicts): the calibrated confidence 0..1 of rag/relevance.py, so the
    confidence of an answer says how sure we are the material is on topic. Order matters: safety first, then a
    request for a person, then vagueness, then whether the course material covers it:
    the first miss still answers (category "no_results"), a second miss in a row escalates.
    """
    if safety_concern(text):
        return Decision("escalate", SAFETY, 0.95, "safety", urgent=True)
    if asks_for_person(text):
        return Decision("escalate", HUMAN, 0.9, "human_request")
    if is_vague(text):
        return Decision("clarify", TOO_VAGUE, 0.8)
    best = max((_score(r) for r in retrieval_results), default=0.0)
    relevant = best >= min_relevance
    if not relevant and is_short(text):
        return Decision("clarify", TOO_VAGUE, 0.6)
    if not relevant:
        previous = _reason(recent_decisions[-1]) if recent_decisions else None
        if previous in (NO_MATERIAL, NO_MATERIAL_AGAIN):
            return Decision("escalate", NO_MATERIAL_AGAIN, 0.8, "no_results")
        return Decision("answer", NO_MATERIAL, 0.4, "no_results")
    return Decision("answer", RELEVANT, round(min(1.0, best), 3))


def model_cannot_help(answer_text: str) -> bool:
    """The model gave the cannot-help sentinel, or a bare refusal instead of an answer."""
    normal = _normal(answer_text)
    if CANNOT_HELP in normal.upper().replace(" ", "_"):
        return True
    return len(normal) <= 160 and bool(_REFUSALS.search(normal))


class SentinelFilter:
    """Holds back streamed text while it could still be the cannot-help sentinel.

    Why: the student should see neither `I_CANNOT_HELP` nor its first letters. Feed each
    delta; emit what `feed` returns; call `flush()` at the end; `triggered` tells whether
    the answer was the sentinel (then escalate).
    """

    def __init__(self) -> None:
        self._held = ""
        self._passing = False
        self.triggered = False

    def feed(self, delta: str) -> str:
        if self._passing:
            return delta
        self._held += delta
        stripped = self._held.strip()
        if stripped.startswith(CANNOT_HELP):
            self.triggered = True
            return ""
        if CANNOT_HELP.startswith(stripped):
            return ""  # still a possible prefix (or only whitespace so far)
        self._passing = True
        out, self._held = self._held, ""
        return out

    def flush(self) -> str:
        out, self._held = ("" if self.triggered else self._held), ""
        return out
