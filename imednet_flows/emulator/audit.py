"""The audit trail and the codings that follow a record's values.

Every path that creates or changes a record (a POST job, an admin mutation) ends in
`record_changed`, so each change leaves exactly one revision and a coded value (an AE term,
a medication) never disagrees with its coding. Revisions are append-only: nothing here, or
anywhere else, removes one, also when its record is hard-deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imednet_flows.emulator.seed import CODED_FORMS, CODER_ROLES
from imednet_flows.emulator.store import StudyStore

#: What `record_changed` compares a coded value with when the record had none.
NO_VALUE = ""


@dataclass(frozen=True)
class Author:
    """Who made a change and why, as the revision records it."""

    user: str
    role: str
    reason: str = ""


#: POST /records runs as the API key's user; the API asks no reason (api-behaviour.md §5).
API_AUTHOR = Author("api-user", "API")
#: Admin mutations without a `user`: the first active site user, else this one.
FALLBACK_SITE_USER = ("site-user", "Study Coordinator")


def site_author(store: StudyStore, reason: str) -> Author:
    """The default author of an admin change: a site user of the study (first active one
    with a site role, by login), since site staff make the edits of a live study."""
    for user in sorted(store.tables["users"].values(), key=lambda u: u["login"]):
        roles = user.get("roles") or [{}]
        if user.get("userActiveInStudy") and roles[0].get("type") == "Site":
            return Author(user["login"], roles[0].get("name", ""), reason)
    return Author(*FALLBACK_SITE_USER, reason)


def author_of(store: StudyStore, user: Any, role: Any, reason: Any, default_reason: str) -> Author:
    """The author a mutation's optional `user`, `role` and `reason` describe, checked, since
    they arrive as JSON through the admin route. A `user` without a `role` takes the role
    that user holds in the study."""
    for name, value in (("user", user), ("role", role), ("reason", reason)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    if user == "" or role == "":
        raise ValueError("user and role must not be empty; leave them out for the default")
    if user is None:
        default = site_author(store, default_reason)
        user, held = default.user, default.role
    else:
        held = next(
            (
                (u.get("roles") or [{}])[0].get("name") or FALLBACK_SITE_USER[1]
                for u in store.tables["users"].values()
                if u["login"] == user
            ),
            FALLBACK_SITE_USER[1],
        )
    return Author(
        user,
        role if role is not None else held,
        reason if reason is not None else default_reason,
    )


def coded_value(record: dict[str, Any]) -> str | None:
    """The record's coded value (AE term, medication), or None when its form codes none."""
    coded = CODED_FORMS.get(record["formKey"])
    if coded is None:
        return None
    value = record["recordData"].get(coded[0], NO_VALUE)
    return NO_VALUE if value is None else str(value)


def record_changed(
    store: StudyStore,
    record: dict[str, Any],
    now: str,
    data_changed: bool,
    author: Author,
    coded_before: str | None,
) -> dict[str, Any]:
    """The one place a record change is recorded: a revision, and the coding when the coded
    value changed (`coded_before` is `coded_value` before the change)."""
    revision = append_revision(store, record, now, data_changed, author)
    after = coded_value(record)
    if after is not None and after != (coded_before or NO_VALUE):
        follow_coded_value(store, record, after, now)
    return revision


def append_revision(
    store: StudyStore, record: dict[str, Any], now: str, data_changed: bool, author: Author
) -> dict[str, Any]:
    """One immutable revision row per change. Its time is the store's clock, never earlier
    than the latest revision's: an audit trail is never back-dated, even when a mutation
    sets an earlier `dateModified` on purpose."""
    rec_rev, data_rev = store.revisions.get(record["recordId"], (0, 0))
    rec_rev, data_rev = rec_rev + 1, data_rev + (1 if data_changed else 0)
    store.revisions[record["recordId"]] = (rec_rev, data_rev)
    created = max(now, store.last_revision_at)
    store.last_revision_at = created
    rev_id = store.new_id("record_revisions")
    revision = {
        "studyKey": store.key,
        "recordRevisionId": rev_id,
        "recordId": record["recordId"],
        "recordOid": record["recordOid"],
        "recordRevision": rec_rev,
        "dataRevision": data_rev,
        "recordStatus": record["recordStatus"],
        "subjectId": record["subjectId"],
        "subjectOid": record["subjectOid"],
        "subjectKey": record["subjectKey"],
        "siteId": record["siteId"],
        "formKey": record["formKey"],
        "intervalId": record["intervalId"],
        "role": author.role,
        "user": author.user,
        "reasonForChange": author.reason,
        "deleted": record["deleted"],
        "dateCreated": created,
    }
    store.tables["record_revisions"][rev_id] = revision
    store.changed("record_revisions")
    return revision


def coding_index(store: StudyStore) -> dict[tuple[int, str], int]:
    """(recordId, variable) -> codingId, built on first use: seeding never pays for it."""
    if store.coding_index is None:
        store.coding_index = {
            (c["recordId"], c["variable"]): coding_id
            for coding_id, c in store.tables["codings"].items()
        }
    return store.coding_index


def coder(store: StudyStore) -> str:
    """Who codes terms: the study's first data manager (by login), as `codedBy` names them."""
    for user in sorted(store.tables["users"].values(), key=lambda u: u["login"]):
        roles = user.get("roles") or [{}]
        if roles[0].get("name") in CODER_ROLES:
            return f"{user['firstName']} {user['lastName']}"
    return "System"


def dictionary_code(form_key: str, value: str) -> str:
    """The dictionary's term for a verbatim value; a verbatim it does not know is coded as
    written, and a cleared value has no code."""
    mapping = CODED_FORMS[form_key][3]
    return mapping.get(value, value) if value else ""


def follow_coded_value(store: StudyStore, record: dict[str, Any], value: str, now: str) -> None:
    """The coding of a record whose coded value changed: the existing one is re-coded (same
    codingId, revision + 1), else a new coding is made."""
    variable, dictionary, version, _ = CODED_FORMS[record["formKey"]]
    index = coding_index(store)
    coding = store.tables["codings"].get(index.get((record["recordId"], variable), -1))
    if coding is None:
        coding_id = store.new_id("codings")
        form = store.tables["forms"].get(record["formId"], {})
        site = store.tables["sites"].get(record["siteId"], {})
        coding = {
            "studyKey": store.key,
            "siteName": site.get("siteName", ""),
            "siteId": record["siteId"],
            "subjectId": record["subjectId"],
            "subjectKey": record["subjectKey"],
            "formId": record["formId"],
            "formName": form.get("formName", ""),
            "formKey": record["formKey"],
            "revision": 0,
            "recordId": record["recordId"],
            "variable": variable,
            "value": "",
            "codingId": coding_id,
            "code": "",
            "codedBy": "",
            "reason": "Initial coding",
            "dictionaryName": dictionary,
            "dictionaryVersion": version,
            "dateCoded": now,
        }
        store.tables["codings"][coding_id] = coding
        index[(record["recordId"], variable)] = coding_id
    else:
        coding["reason"] = "Verbatim term changed"
    coding.update(
        value=value,
        code=dictionary_code(record["formKey"], value),
        codedBy=coder(store),
        revision=coding["revision"] + 1,
        dateCoded=now,
    )
    store.changed("codings")
