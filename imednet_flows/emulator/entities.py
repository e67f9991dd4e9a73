"""What the API exposes per list endpoint: its id field, default sort and filterable fields.

One table drives routing, sorting and filter compilation, so an endpoint cannot
accept a filter attribute that it does not also sort by or return.
"""

from __future__ import annotations

from dataclasses import dataclass

from imednet_flows.emulator.filters import FieldKind


@dataclass(frozen=True)
class Entity:
    route: str  # the last path segment, e.g. "recordRevisions"
    table: str  # attribute name on StudyData / StudyStore, e.g. "record_revisions"
    id_field: str
    default_sort: str
    fields: dict[str, FieldKind]
    filterable: bool = True


def _kinds(spec: str) -> dict[str, FieldKind]:
    """Parse "name:kind name:kind" so the field tables below stay readable."""
    out: dict[str, FieldKind] = {}
    for item in spec.split():
        name, kind = item.split(":")
        out[name] = kind  # type: ignore[assignment]
    return out


_STAMPS = "dateCreated:ts dateModified:ts"

ENTITIES: dict[str, Entity] = {
    e.route: e
    for e in (
        Entity(
            "studies",
            "study",
            "studyId",
            "studyKey",
            _kinds(
                "sponsorKey:str studyKey:str studyId:int studyName:str studyDescription:str "
                f"studyType:str {_STAMPS}"
            ),
        ),
        Entity(
            "sites",
            "sites",
            "siteId",
            "siteId",
            _kinds(f"studyKey:str siteId:int siteName:str siteEnrollmentStatus:str {_STAMPS}"),
        ),
        Entity(
            "forms",
            "forms",
            "formId",
            "formId",
            _kinds(
                "studyKey:str formId:int formKey:str formName:str formType:str revision:int "
                "embeddedLog:bool enforceOwnership:bool userAgreement:bool "
                "subjectRecordReport:bool unscheduledVisit:bool otherForms:bool eproForm:bool "
                f"allowCopy:bool disabled:bool {_STAMPS}"
            ),
        ),
        Entity(
            "intervals",
            "intervals",
            "intervalId",
            "intervalId",
            _kinds(
                "studyKey:str intervalId:int intervalName:str intervalDescription:str "
                "intervalSequence:int intervalGroupId:int intervalGroupName:str timeline:str "
                "definedUsingInterval:str windowCalculationForm:str windowCalculationDate:str "
                "actualDateForm:str actualDate:str dueDateWillBeIn:int negativeSlack:int "
                f"positiveSlack:int eproGracePeriod:int disabled:bool {_STAMPS}"
            ),
        ),
        Entity(
            "visits",
            "visits",
            "visitId",
            "visitId",
            _kinds(
                "studyKey:str visitId:int intervalId:int intervalName:str subjectId:int "
                "subjectKey:str startDate:date endDate:date dueDate:date visitDate:date "
                f"visitDateForm:str visitDateQuestion:str deleted:bool {_STAMPS}"
            ),
        ),
        Entity(
            "subjects",
            "subjects",
            "subjectId",
            "subjectId",
            _kinds(
                "studyKey:str subjectId:int subjectOid:str subjectKey:str subjectStatus:str "
                f"siteId:int siteName:str deleted:bool enrollmentStartDate:ts {_STAMPS}"
            ),
        ),
        Entity(
            "users",
            "users",
            "userId",
            "login",
            _kinds(
                "userId:str login:str firstName:str lastName:str email:str userActiveInStudy:bool"
            ),
            filterable=False,
        ),
        Entity(
            "variables",
            "variables",
            "variableId",
            "variableId",
            _kinds(
                "studyKey:str variableId:int variableType:str variableName:str sequence:int "
                "revision:int disabled:bool formId:int variableOid:str deleted:bool formKey:str "
                f"formName:str label:str blinded:bool {_STAMPS}"
            ),
        ),
        Entity(
            "codings",
            "codings",
            "codingId",
            "recordId",
            _kinds(
                "studyKey:str siteName:str siteId:int subjectId:int subjectKey:str formId:int "
                "formName:str formKey:str revision:int recordId:int variable:str value:str "
                "codingId:int code:str codedBy:str reason:str dictionaryName:str "
                "dictionaryVersion:str dateCoded:ts"
            ),
        ),
        Entity(
            "queries",
            "queries",
            "annotationId",
            "annotationId",
            _kinds(
                "studyKey:str subjectId:int subjectOid:str annotationType:str annotationId:int "
                f"type:str description:str recordId:int variable:str subjectKey:str {_STAMPS}"
            ),
        ),
        Entity(
            "recordRevisions",
            "record_revisions",
            "recordRevisionId",
            "recordRevisionId",
            _kinds(
                "studyKey:str recordRevisionId:int recordId:int recordOid:str recordRevision:int "
                "dataRevision:int recordStatus:str subjectId:int subjectOid:str subjectKey:str "
                "siteId:int formKey:str intervalId:int role:str user:str reasonForChange:str "
                "deleted:bool dateCreated:ts"
            ),
        ),
        Entity(
            "records",
            "records",
            "recordId",
            "recordId",
            _kinds(
                "studyKey:str intervalId:int formId:int formKey:str siteId:int recordId:int "
                "recordOid:str recordType:str recordStatus:str deleted:bool subjectId:int "
                f"subjectOid:str subjectKey:str visitId:int parentRecordId:int {_STAMPS}"
            ),
        ),
    )
}

#: Study-scoped list routes, i.e. everything under /studies/{studyKey}/.
STUDY_ROUTES = tuple(r for r in ENTITIES if r != "studies")
