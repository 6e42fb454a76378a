"""The portal's languages: every visible string goes through gettext. English is the source (the msgids);
Bahasa Indonesia is ``locale/id/LC_MESSAGES/messages.po``. The shipped .po files are compiled by Babel into
gettext catalogs in memory on first use, so no build step (and no compiled .mo in the repository) is needed.
A user's language is ``User.locale``; an unknown one falls back to English.
"""

from __future__ import annotations

import gettext
import io
from functools import cache
from pathlib import Path

LOCALES = {"en": "English", "id": "Bahasa Indonesia"}


def N_(message: str) -> str:
    """Marks a string for extraction without translating it here (it is translated where it is shown)."""
    return message


# Values the pages show through ``_()`` that no literal in a template names: role names, job, sweep, trial and
# file statuses, weights states, report verdicts and levels, evaluation metrics. Listed so ``pybabel extract`` keeps them.
SHOWN_VALUES = (
    N_("Reader"), N_("AI Developer"), N_("Owner"),
    N_("validating_files"), N_("queued"), N_("running"), N_("paused"), N_("succeeded"), N_("failed"),
    N_("cancelled"), N_("processed"), N_("error"), N_("complete"), N_("pruned"),
    N_("present on this server"), N_("embedded (prepared on first use)"), N_("not on this server"),
    N_("ready"), N_("review"), N_("blocked"), N_("warning"), N_("info"),
    N_("validation loss"), N_("perplexity"), N_("mean token accuracy"), N_("exact match"), N_("ROUGE-L"),
    N_("label accuracy"), N_("accuracy"),
)
DEFAULT = "en"
_FOLDER = Path(__file__).parent / "locale"


@cache
def translations(locale: str | None) -> gettext.NullTranslations:
    """The gettext catalog of a locale (English: the msgids themselves)."""
    if locale not in LOCALES or locale == DEFAULT:
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with (_FOLDER / locale / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po, locale=locale)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def locale_of(value: str | None) -> str:
    return value if value in LOCALES else DEFAULT


def gettext_for(locale: str | None):
    """``_(message, **values)``: the translation of ``message``, with ``%(name)s`` placeholders filled."""
    translate = translations(locale_of(locale)).gettext

    def _(message: str, **values) -> str:
        text = translate(message)
        return text % values if values else text

    return _
