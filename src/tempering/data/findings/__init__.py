"""The checks behind the data quality report, each a measurement and the findings it leads to.

Owns the text keys that decide when two examples are the same (``keys``; ``data.split`` uses them too),
label inference from repeated short answers, and the detectors: duplicates and leakage across
training/validation (``duplicates``), labels and imbalance (``labels``), diversity (``diversity``),
suspicious content such as mojibake, escapes, control characters and likely PII (``content``). Each
detector returns its pydantic measurement and a list of ``Finding`` (``finding``) with the line numbers it
is about. Knows nothing about files, formats, tokenizers or the verdict: it is handed converted examples,
and ``data.report`` composes its results into the report. Import from here.
"""

from tempering.data.findings.content import SUSPICIOUS_CODES, content_findings, content_flags
from tempering.data.findings.diversity import DOMINANT_SHARE, Diversity, diversity_findings, diversity_stats
from tempering.data.findings.duplicates import DuplicateGroup, Duplicates, duplicate_findings, find_duplicates
from tempering.data.findings.finding import Distribution, Finding, Level, distribution, lines_text
from tempering.data.findings.keys import (
    MAX_LABEL_CHARS,
    MAX_LABEL_WORDS,
    MIN_EXAMPLES_TO_DETECT_LABELS,
    PREVIEW_CHARS,
    exact_key,
    final_answer,
    infer_labels,
    near_key,
    normalize,
    prompt_key,
    training_label_set,
)
from tempering.data.findings.labels import (
    IMBALANCE_WARNING,
    MIN_PER_CLASS,
    LabelStats,
    label_findings,
    label_stats,
)

__all__ = [
    "DOMINANT_SHARE",
    "IMBALANCE_WARNING",
    "MAX_LABEL_CHARS",
    "MAX_LABEL_WORDS",
    "MIN_EXAMPLES_TO_DETECT_LABELS",
    "MIN_PER_CLASS",
    "PREVIEW_CHARS",
    "SUSPICIOUS_CODES",
    "Distribution",
    "Diversity",
    "DuplicateGroup",
    "Duplicates",
    "Finding",
    "LabelStats",
    "Level",
    "content_findings",
    "content_flags",
    "distribution",
    "diversity_findings",
    "diversity_stats",
    "duplicate_findings",
    "exact_key",
    "final_answer",
    "find_duplicates",
    "infer_labels",
    "label_findings",
    "label_stats",
    "lines_text",
    "near_key",
    "normalize",
    "prompt_key",
    "training_label_set",
]
