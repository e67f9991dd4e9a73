"""The study-level collections of the API, and how each is mirrored.

One declarative table drives the sync, the cache's tables, the Parquet snapshots and the
readers, so a collection cannot be fetched one way and stored or typed another. The API's
spelling is kept wherever a person meets it (snapshot files `recordRevisions.parquet`, column
`recordRevisionId`); SQLite tables and columns use snake case.

How each collection is kept up to date (`mode`):

* ``reference``: small study set-up lists (sites, forms, intervals, variables, users). Listed
  whole every run; what is not listed is gone. Written only when their content changed.
* ``changes``: subjects, visits, records, queries, codings. Fetched by a watermark on their
  change timestamp (``dateModified``, for codings ``dateCoded``); hard deletes are found by
  comparing counts and bisecting id ranges (`reconcile`).
* ``append``: recordRevisions, the audit trail. Revisions are immutable and never deleted,
  so only those created since the watermark (``dateCreated``) are fetched; nothing is
  reconciled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from imednet_flows.query_state import query_open

Mode = Literal["reference", "changes", "append"]
Kind = Literal["int", "str", "bool", "float", "ts", "date"]


def snake(name: str) -> str:
    """API field name to a SQL column name: ``recordRevisionId`` -> ``record_revision_id``."""
    out = []
    for char in name:
        if char.isupper():
            out.append("_")
        out.append(char.lower())
    return "".join(out)


@dataclass(frozen=True)
class Column:
    """A SQLite column beside ``raw``, kept because readers filter on it."""

    name: str
    sql_type: str
    #: The API field it copies, or a function of the whole item (derived columns).
    source: str | Callable[[dict[str, Any]], Any]

    @property
    def field(self) -> str | None:
        return self.source if isinstance(self.source, str) else None


@dataclass(frozen=True)
class Collection:
    name: str
    id_field: str
    id_kind: Literal["int", "str"]
    mode: Mode
    #: The change timestamp a delta filters on (``changes`` and ``append`` modes).
    since_field: str | None
    #: API fields typed in snapshots and reader frames, in order (nested objects stay in raw).
    fields: tuple[tuple[str, Kind], ...]
    #: SQLite columns beside the id and ``raw``.
    columns: tuple[Column, ...] = ()
    #: SQLite indexes: tuples of column names after ``study_key``.
    indexes: tuple[tuple[str, ...], ...] = ()
    #: Query parameters every listing carries (users: includeInactive=true).
    params: dict[str, str] = field(default_factory=dict)
    #: The API accepts ``filter`` on this route (users: no).
    filterable: bool = True
    #: The API's default sort is the id (else listings that rely on id order ask for it).
    sorted_by_id: bool = True
    #: Derived columns added to snapshot tables: (name, kind, function of the item).
    derived: tuple[tuple[str, Kind, Callable[[dict[str, Any]], Any]], ...] = ()

    @property
    def route(self) -> str:
        return self.name

    @property
    def table(self) -> str:
        return snake(self.name)

    @property
    def id_column(self) -> str:
        return snake(self.id_field)

    @property
    def column_names(self) -> list[str]:
        """Every SQLite column in table order."""
        return ["study_key", self.id_column, *(c.name for c in self.columns), "raw"]

    @property
    def incremental(self) -> bool:
        return self.mode != "reference"

    @property
    def reconciled(self) -> bool:
        return self.mode == "changes"

    def id_sort(self) -> dict[str, str]:
        """The sort parameter for listings that must come in id order."""
        return {} if self.sorted_by_id else {"sort": f"{self.id_field},asc"}


def _fields(spec: str) -> tuple[tuple[str, Kind], ...]:
    """Parse "name:kind name:kind", so the tables below stay readable."""
    out: list[tuple[str, Kind]] = []
    for item in spec.split():
        name, kind = item.split(":")
        out.append((name, kind))  # type: ignore[arg-type]
    return tuple(out)


def _col(api_field: str, sql_type: str = "TEXT") -> Column:
    return Column(snake(api_field), sql_type, api_field)


def _flag(item: dict[str, Any], name: str = "deleted") -> int:
    return 1 if item.get(name) else 0


_DELETED = Column("deleted", "INTEGER NOT NULL", _flag)
_STAMPS = "dateCreated:ts dateModified:ts"

SITES = Collection(
    "sites",
    "siteId",
    "int",
    "reference",
    None,
    _fields(f"siteId:int siteName:str siteEnrollmentStatus:str {_STAMPS}"),
)
FORMS = Collection(
    "forms",
    "formId",
    "int",
    "reference",
    None,
    _fields(
        "formId:int formKey:str formName:str formType:str revision:int embeddedLog:bool "
        "enforceOwnership:bool userAgreement:bool subjectRecordReport:bool "
        f"unscheduledVisit:bool otherForms:bool eproForm:bool allowCopy:bool disabled:bool "
        f"{_STAMPS}"
    ),
    columns=(_col("formKey"),),
)
INTERVALS = Collection(
    "intervals",
    "intervalId",
    "int",
    "reference",
    None,
    _fields(
        "intervalId:int intervalName:str intervalDescription:str intervalSequence:int "
        "intervalGroupId:int intervalGroupName:str timeline:str definedUsingInterval:str "
        "windowCalculationForm:str windowCalculationDate:str actualDateForm:str actualDate:str "
        "dueDateWillBeIn:int negativeSlack:int positiveSlack:int eproGracePeriod:int "
        f"disabled:bool {_STAMPS}"
    ),
)
VARIABLES = Collection(
    "variables",
    "variableId",
    "int",
    "reference",
    None,
    _fields(
        "variableId:int variableType:str variableName:str sequence:int revision:int "
        "disabled:bool formId:int variableOid:str deleted:bool formKey:str formName:str "
        f"label:str blinded:bool {_STAMPS}"
    ),
    columns=(_col("formKey"),),
)
USERS = Collection(
    "users",
    "userId",
    "str",
    "reference",
    None,
    _fields("userId:str login:str firstName:str lastName:str email:str userActiveInStudy:bool"),
    params={"includeInactive": "true"},
    filterable=False,
    sorted_by_id=False,
)
SUBJECTS = Collection(
    "subjects",
    "subjectId",
    "int",
    "changes",
    "dateModified",
    _fields(
        "subjectId:int subjectOid:str subjectKey:str subjectStatus:str siteId:int siteName:str "
        f"deleted:bool enrollmentStartDate:ts {_STAMPS}"
    ),
    columns=(_col("subjectKey"), _DELETED),
    indexes=(("subject_key",),),
)
VISITS = Collection(
    "visits",
    "visitId",
    "int",
    "changes",
    "dateModified",
    _fields(
        "visitId:int intervalId:int intervalName:str subjectId:int subjectKey:str "
        "startDate:date endDate:date dueDate:date visitDate:date visitDateForm:str "
        f"visitDateQuestion:str deleted:bool {_STAMPS}"
    ),
    columns=(_col("subjectKey"), _DELETED),
    indexes=(("subject_key",),),
)
RECORDS = Collection(
    "records",
    "recordId",
    "int",
    "changes",
    "dateModified",
    _fields(
        "recordId:int recordOid:str formId:int formKey:str siteId:int subjectId:int "
        "subjectOid:str subjectKey:str intervalId:int visitId:int parentRecordId:int "
        f"recordStatus:str recordType:str deleted:bool {_STAMPS}"
    ),
    columns=(_col("formKey"), _col("subjectKey"), _DELETED),
    indexes=(("form_key",), ("subject_key",)),
)
RECORD_REVISIONS = Collection(
    "recordRevisions",
    "recordRevisionId",
    "int",
    "append",
    "dateCreated",
    _fields(
        "recordRevisionId:int recordId:int recordOid:str recordRevision:int dataRevision:int "
        "recordStatus:str subjectId:int subjectOid:str subjectKey:str siteId:int formKey:str "
        "intervalId:int role:str user:str reasonForChange:str deleted:bool dateCreated:ts"
    ),
    columns=(Column("record_id", "INTEGER", "recordId"),),
    indexes=(("record_id",),),
)
QUERIES = Collection(
    "queries",
    "annotationId",
    "int",
    "changes",
    "dateModified",
    _fields(
        "annotationId:int annotationType:str type:str description:str subjectId:int "
        f"subjectOid:str subjectKey:str recordId:int variable:str {_STAMPS}"
    ),
    columns=(
        _col("subjectKey"),
        Column("record_id", "INTEGER", "recordId"),
        Column("is_open", "INTEGER", query_open),
    ),
    indexes=(("subject_key",),),
    derived=(("isOpen", "bool", query_open),),
)
CODINGS = Collection(
    "codings",
    "codingId",
    "int",
    "changes",
    "dateCoded",
    _fields(
        "codingId:int recordId:int siteId:int siteName:str subjectId:int subjectKey:str "
        "formId:int formKey:str formName:str revision:int variable:str value:str code:str "
        "codedBy:str reason:str dictionaryName:str dictionaryVersion:str dateCoded:ts"
    ),
    columns=(Column("record_id", "INTEGER", "recordId"),),
    indexes=(("record_id",),),
    sorted_by_id=False,
)

#: Every study-level collection, in the order a run syncs them: forms first (a study the
#: key cannot read fails there, before anything else is asked), the rest of the set-up, then
#: the data, then what refers to it.
COLLECTIONS: tuple[Collection, ...] = (
    FORMS,
    VARIABLES,
    SITES,
    INTERVALS,
    USERS,
    SUBJECTS,
    VISITS,
    RECORDS,
    RECORD_REVISIONS,
    QUERIES,
    CODINGS,
)
BY_NAME: dict[str, Collection] = {c.name: c for c in COLLECTIONS}


def collection(name: str) -> Collection:
    """A collection by its API name (``recordRevisions``) or table name (``record_revisions``)."""
    for spec in COLLECTIONS:
        if name in (spec.name, spec.table):
            return spec
    raise KeyError(
        f"no collection {name!r}; the collections are {', '.join(c.name for c in COLLECTIONS)}"
    )
