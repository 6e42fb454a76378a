"""The content filter's categories: the shipped ones and the server's custom ones, which a server administrator
trains from a project's file of labelled examples (``{"text", "label"}`` JSON Lines; Azure AI Content Safety's
custom categories) through the API or the CLI, and deletes when no policy names them. A custom category is
the server's, like the shipped classifiers: every project's policies may name it. Training is scikit-learn's
(seconds for thousands of examples); every server and worker process on this machine picks a new category up
within seconds (``safety.classify.default_classifier``)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from tempering.errors import ConflictError, InvalidConfigError, TemperingError, not_found
from tempering.safety.classify import custom_dir, reset_default_classifier
from tempering.services import audit
from tempering.services.access import Caller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    name: str
    kind: str  # "built-in" or "custom"
    description: str
    valid_average_precision: float | None  # on the held-out validation split
    training_rows: int | None


def categories() -> list[Category]:
    """Every category the content filter can check: the built-in ones, then the custom ones."""
    from tempering.safety.classify import default_classifier

    classifier = default_classifier()
    out = []
    for index, bundle in enumerate(classifier.bundles):  # the shipped bundle first, then the custom ones
        for head in bundle.heads:
            out.append(Category(head.name, "custom" if index else "built-in", head.meta.get("description", ""),
                                head.meta.get("valid", {}).get("average_precision"),
                                head.meta.get("train", {}).get("rows")))
        if index == 0:  # the built-in ones in policy.BUILTIN's order: the shipped heads, then the lexicon
            out.append(Category("profanity", "built-in", "profanity lexicon (whole words and stems)", None, None))
    return out


def names() -> list[str]:
    """Every category a policy may name, built in first (the policy editors' rows)."""
    return [c.name for c in categories()]


def train(db, caller: Caller, store, name: str, file_id: str) -> Category:
    """A custom category ``name`` trained on a file of the caller's project; refused for a built-in or taken
    name, a file that is not ``{"text", "label"}`` JSON Lines, or one without both labels."""
    import re

    from tempering.safety.policy import BUILTIN
    from tempering.safety.train import NAME_PATTERN, train_custom
    from tempering.services._files import owned_file

    if not re.fullmatch(NAME_PATTERN, name or ""):
        raise InvalidConfigError("a category's name is lower-case letters, digits and '_', starting with a letter "
                                 "(at most 40)", param="name")
    with db.session(write=False) as session:
        row = owned_file(session, caller.project_id, file_id, "training_file")
        path = store.file_path(row.id)
    folder = custom_dir()
    with _exclusive(folder):  # one change of the custom categories at a time (two trains of one name: one wins)
        if name in BUILTIN or name in {c.name for c in categories()}:
            raise ConflictError(f"the category {name!r} exists; delete it first (built-in ones cannot be replaced)",
                                param="name", code="category_exists")
        try:
            train_custom(name, path, folder, log=lambda _message: None)
        except (KeyError, ValueError, TypeError) as exc:  # a row without text or label, bad JSON, one class only
            raise TemperingError(f"{row.filename} cannot train a category: {exc} (JSON Lines of "
                                 '{"text": "…", "label": 0 or 1} are needed, both labels in every split)',
                                 param="training_file", code="invalid_training_file") from None
        try:
            with db.session() as session:
                audit.record(session, "safety_category.created", caller=caller, target=name, file=file_id)
        except Exception:  # no category without its audit entry
            _remove_files(folder, name)
            raise
    reset_default_classifier()  # this process at once; the others within seconds
    made = next((c for c in categories() if c.name == name), None)
    if made is None:
        raise TemperingError(f"the category {name!r} was trained but could not be loaded; see the server's log",
                             param="name", code="category_unloadable", kind="internal")
    return made


def users(session, name: str, settings) -> list[str]:
    """Where a category is named: live deployments' own policies (any project), hubs' default policies, the
    server's default policy."""
    from sqlalchemy import select

    from tempering.services.filtering import server_policy
    from tempering.store.models import Deployment, Hub

    def names(policy: dict | None) -> bool:
        return bool(policy) and (name in (policy.get("prompt") or {}) or name in (policy.get("completion") or {}))

    found = [f"deployment {d.name}" for d in session.scalars(select(Deployment).where(Deployment.deleted_at.is_(None)))
             if names(d.content_filter_policy)]
    found += [f"hub {h.name}" for h in session.scalars(select(Hub))
              if names((h.settings or {}).get("content_filter_policy"))]
    if names(server_policy(settings).model_dump()):
        found.append("the server's default policy")
    return found


def delete(session, caller: Caller, name: str, settings) -> None:
    """Delete a custom category; refused while a policy names it (its checks would fail on every request).
    Its files go once the transaction holding the audit entry commits: a failed commit leaves the category."""
    category = next((c for c in categories() if c.name == name), None)
    if category is None:
        raise not_found("category", name, "name")
    if category.kind != "custom":
        raise TemperingError(f"{name} is built in; only custom categories are deleted", param="name",
                             code="builtin_category", kind="forbidden")
    folder = custom_dir()
    if not (folder / f"{name}.json").is_file():  # a bundle placed by hand under another file name
        raise TemperingError(f"the category {name!r} was not trained here (its bundle has another name); remove "
                             "its files on the server", param="name", code="category_not_ours")
    with _exclusive(folder):
        named = users(session, name, settings)
        if named:
            raise ConflictError(f"the category {name!r} is named by {', '.join(named)}; take it out of those "
                                "policies first", param="name", code="category_in_use")
        audit.record(session, "safety_category.deleted", caller=caller, target=name)
        session.flush()
    # the files go once the deletion and its audit entry are committed (as services.files deletes bytes); a
    # transaction that rolls back never fires it, and the category stays
    from sqlalchemy import event

    event.listen(session, "after_commit", lambda _: _unlink(folder, name), once=True)


def _unlink(folder: Path, name: str) -> None:
    """A committed deletion's files. A failure is logged, not raised: the commit it follows has happened."""
    try:
        with _exclusive(folder):
            _remove_files(folder, name)
        reset_default_classifier()
    except Exception:
        log.exception("removing the files of the deleted category %s", name)


def _remove_files(folder: Path, name: str) -> None:
    for suffix in (".json", ".safetensors"):  # the JSON first: what a reader looks for
        (folder / f"{name}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(folder: Path):
    """A lock on the custom categories' folder (every process of this machine): one train or delete at a time."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
