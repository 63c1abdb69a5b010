"""What the tutor says when it does not answer from the material: clarifying questions,
hand-overs to a person, failures. Fixed texts in English, French and Arabic, chosen by the
language of the student's message, so none of it depends on a model being up.
"""

from __future__ import annotations

from rag.offline import detect_language

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "clarify": "Could you tell me a little more about what you would like to learn? "
        "For example, name the topic or paste the question you are working on.",
        "clarify_lesson": "Could you tell me a little more about what you would like to learn "
        "about {lesson}? For example, name the idea you are stuck on or paste the question.",
        "escalate_human": "Of course. I am passing this conversation to a person from the team, "
        "who will reply here as soon as they can.",
        "escalate_no_results": "I could not find this in the course material, so I am asking a "
        "person from the team to help. They will reply here as soon as they can.",
        "escalate_cannot_help": "I am not able to help with this one, so I am passing it to a "
        "person from the team, who will reply here as soon as they can.",
        "escalate_safety": "Thank you for telling me. You do not have to deal with this alone. "
        "I am alerting a person from our team right now so they can reach out to you here. "
        "If you are in danger or might hurt yourself, please call your local emergency number "
        "or a crisis line now.",
        "no_person": "I cannot reach a person from here right now. Please contact your mentor "
        "or the support team directly.",
        "unavailable": "The tutor is unavailable right now. Please try again in a moment, "
        "or ask to talk to a person.",
        "interrupted": "(The answer was interrupted because the tutor became unavailable. "
        "Please ask again in a moment.)",
        "stopped": "(Answer stopped.)",
    },
    "fr": {
        "clarify": "Pouvez-vous m'en dire un peu plus sur ce que vous voulez apprendre ? "
        "Par exemple, nommez le sujet ou collez la question sur laquelle vous travaillez.",
        "clarify_lesson": "Pouvez-vous m'en dire un peu plus sur ce que vous voulez apprendre "
        "à propos de {lesson} ? Par exemple, l'idée qui vous bloque ou la question elle-même.",
        "escalate_human": "Bien sûr. Je transmets cette conversation à une personne de l'équipe, "
        "qui vous répondra ici dès que possible.",
        "escalate_no_results": "Je n'ai pas trouvé cela dans le support de cours, je demande donc "
        "à une personne de l'équipe de vous aider. Elle vous répondra ici dès que possible.",
        "escalate_cannot_help": "Je ne peux pas vous aider sur ce point, je transmets donc à une "
        "personne de l'équipe, qui vous répondra ici dès que possible.",
        "escalate_safety": "Merci de me l'avoir dit. Vous n'avez pas à affronter cela seul·e. "
        "Je préviens tout de suite une personne de notre équipe pour qu'elle vous contacte ici. "
        "Si vous êtes en danger ou risquez de vous faire du mal, appelez immédiatement le "
        "numéro d'urgence local ou une ligne d'écoute.",
        "no_person": "Je ne peux pas joindre une personne d'ici pour le moment. Contactez "
        "directement votre mentor ou l'équipe d'assistance.",
        "unavailable": "Le tuteur n'est pas disponible pour le moment. Réessayez dans un instant, "
        "ou demandez à parler à une personne.",
        "interrupted": "(La réponse a été interrompue car le tuteur n'est plus disponible. "
        "Reposez votre question dans un instant.)",
        "stopped": "(Réponse arrêtée.)",
    },
    "ar": {
        "clarify": "هل يمكنك أن تخبرني أكثر قليلًا عما تريد أن تتعلمه؟ "
        "مثلًا، اذكر الموضوع أو الصق السؤال الذي تعمل عليه.",
        "clarify_lesson": "هل يمكنك أن تخبرني أكثر قليلًا عما تريد أن تتعلمه عن {lesson}؟ "
        "مثلًا، الفكرة التي توقفت عندها أو السؤال نفسه.",
        "escalate_human": "بالتأكيد. سأحوّل هذه المحادثة إلى شخص من الفريق، وسيرد عليك هنا في أقرب وقت.",
        "escalate_no_results": "لم أجد هذا في مادة الدرس، لذلك أطلب من شخص من الفريق أن يساعدك. "
        "سيرد عليك هنا في أقرب وقت.",
        "escalate_cannot_help": "لا أستطيع المساعدة في هذا، لذلك سأحوّله إلى شخص من الفريق، "
        "وسيرد عليك هنا في أقرب وقت.",
        "escalate_safety": "شكرًا لأنك أخبرتني. لست وحدك في هذا. سأنبّه شخصًا من فريقنا الآن "
        "ليتواصل معك هنا. إذا كنت في خطر أو قد تؤذي نفسك، فاتصل فورًا برقم الطوارئ المحلي "
        "أو بخط مساعدة.",
        "no_person": "لا أستطيع الوصول إلى شخص من هنا الآن. يرجى التواصل مباشرة مع مرشدك أو فريق الدعم.",
        "unavailable": "المعلم الآلي غير متاح الآن. حاول مرة أخرى بعد قليل، أو اطلب التحدث مع شخص.",
        "interrupted": "(توقفت الإجابة لأن المعلم الآلي أصبح غير متاح. أعد السؤال بعد قليل.)",
        "stopped": "(تم إيقاف الإجابة.)",
    },
}

_ESCALATION_KEYS = {
    "safety": "escalate_safety",
    "human_request": "escalate_human",
    "no_results": "escalate_no_results",
    "model_cannot_help": "escalate_cannot_help",
}


def text(key: str, question: str, **fields: str) -> str:
    """The fixed text `key` in the language of the student's `question`."""
    return TEXTS[detect_language(question)][key].format(**fields)


def clarify(question: str, lesson: str | None) -> str:
    return text("clarify_lesson", question, lesson=lesson) if lesson else text("clarify", question)


def escalation(question: str, category: str | None, *, person_reachable: bool) -> str:
    """What the student is told when the tutor hands over. Safety words are always said,
    even when no ticket could be opened."""
    if category == "safety":
        message = text("escalate_safety", question)
        return message if person_reachable else message + "\n\n" + text("no_person", question)
    if not person_reachable:
        return text("no_person", question)
    return text(_ESCALATION_KEYS.get(category or "", "escalate_human"), question)
