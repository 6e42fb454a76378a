"""OpenAI's moderation result, from Tempering's classifiers: what ``POST /v1/moderations`` and
``tempering moderate`` answer.

Tempering classifies four of OpenAI's thirteen categories (hate, sexual, violence, self-harm); the others
are reported not flagged with score 0 and no applied input type, so a client can tell "not checked" from
"checked and clean". ``flagged`` means some classified category reaches the default threshold (medium
severity: calibrated probability ≥ 0.5).
"""

from __future__ import annotations

from tempering.safety.policy import BANDS

MODEL = "tempering-safety-v1"
# OpenAI's names → ours (None: not classified by Tempering; reported false / 0)
OPENAI_CATEGORIES = {
    "harassment": None, "harassment/threatening": None, "hate": "hate", "hate/threatening": None,
    "illicit": None, "illicit/violent": None, "self-harm": "self_harm", "self-harm/intent": None,
    "self-harm/instructions": None, "sexual": "sexual", "sexual/minors": None, "violence": "violence",
    "violence/graphic": None,
}
FLAG_AT = dict(BANDS)["medium"]


def moderate(texts: list[str], scorer=None) -> list[dict]:
    """One OpenAI moderation result per text."""
    if scorer is None:
        from tempering.safety.classify import default_classifier

        scorer = default_classifier()
    results = []
    for scores in scorer.score(texts):
        categories, category_scores, applied = {}, {}, {}
        for openai_name, ours in OPENAI_CATEGORIES.items():
            p = float(scores.get(ours, 0.0)) if ours else 0.0
            categories[openai_name] = bool(ours) and p >= FLAG_AT
            category_scores[openai_name] = p
            applied[openai_name] = ["text"] if ours else []
        results.append({"flagged": any(categories.values()), "categories": categories,
                        "category_scores": category_scores, "category_applied_input_types": applied})
    return results
