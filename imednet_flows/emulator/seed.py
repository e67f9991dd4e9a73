"""Deterministic seed data for the iMednet EDC emulator.

The emulator serves these dicts verbatim, so every object is the exact API JSON of
api-behaviour.md §3 (all fields present, ``ts`` strings, string-valued ``recordData``).
Generation is driven only by :class:`StudySpec` through one ``random.Random`` so two
runs (and two processes) produce byte-identical data, which is what lets tests compare
emulator output against a fresh generation.

Performance matters: a 200k-record study is built in a couple of seconds, so the hot loop
reuses shared immutable strings (value pools, per-visit date and timestamp strings) and
creates no per-record objects beyond the JSON dicts themselves.

Choices where the contract is silent (kept here so emulator authors can rely on them):

* Ids follow time: subjects by enrollment, visits/records by entry second, revisions by the
  instant they snapshot, queries by creation. Codings are numbered in record order.
* Every record has the audit trail of its history: a revision at entry (``dateCreated`` of the
  record, no reason), one per later change (an edit with a reason, a soft delete, the data
  migration, by the system user), so the latest revision's ``dateCreated`` equals the record's
  ``dateModified``. ``recordRevision`` counts every change, ``dataRevision`` those of the data
  (entry and edits). About a quarter of the records have more than one revision.
* One coding per coded value (AE ``aeterm``, CM ``cmtrt``) that is not blank; a tenth of them
  were re-coded (``revision`` 2, same ``codingId``, a later ``dateCoded``).
* All records of a visit are entered in one second; later edits of a visit share one second;
  one migration second (2025-12-15 02:00:00) re-saves a slice of all records (at least 150
  rows when the study has 300+, 3% of large studies) so watermark tests see a same-second
  block larger than a page.
* "subject" queries carry ``recordId`` 0 and ``variable`` ""; "record" queries carry the
  record id and ``variable`` "". Every DATE value in ``recordData`` is its visit date.
* Users come from their own random stream (their number does not change the clinical data);
  about one in seven has left the study (``userActiveInStudy`` false), always at least one when
  there are two or more, the one with the highest index among them.
"""

from __future__ import annotations

import gc
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from statistics import NormalDist
from typing import Any

__all__ = [
    "FORM_CATALOGUE",
    "ID_FIELDS",
    "ID_STRIDE",
    "VARIABLE_TYPES",
    "StudyData",
    "StudySpec",
    "generate_study",
]

#: Ids are ``study_id * ID_STRIDE + n`` so several seeded studies never share an id.
ID_STRIDE = 10_000_000

#: The only variableType values the seed emits.
VARIABLE_TYPES = ("TEXT", "MEMO", "INTEGER", "NUMBER", "DATE", "RADIO", "CHECKBOX")

#: List name on :class:`StudyData` -> the field its default sort orders by.
ID_FIELDS = {
    "sites": "siteId",
    "forms": "formId",
    "intervals": "intervalId",
    "variables": "variableId",
    "subjects": "subjectId",
    "visits": "visitId",
    "records": "recordId",
    "record_revisions": "recordRevisionId",
    "queries": "annotationId",
    "codings": "recordId",
    "users": "login",
}


# --------------------------------------------------------------------------------------
# Spec and result containers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySpec:
    """Shape of one seeded study; frozen so it can key caches and be shared safely."""

    study_key: str = "DEMO"
    study_id: int = 1
    seed: int = 1
    sites: int = 3
    subjects: int = 50
    intervals: int = 4
    forms_per_interval: int = 3
    query_rate: float = 0.15
    closed_query_rate: float = 0.4
    #: Site staff, monitors, data managers and those who have left: enough to page at 100.
    users: int = 120
    soft_deleted_rate: float = 0.01

    @classmethod
    def for_records(cls, n: int, **kw: Any) -> StudySpec:
        """Size a study by record count, since benchmarks think in rows, not subjects."""
        kw.pop("subjects", None)
        probe = cls(**kw)
        per_subject = max(1, probe.intervals) * max(1, probe.forms_per_interval)
        return cls(subjects=max(1, math.ceil(n / per_subject)), **kw)

    @property
    def record_count(self) -> int:
        """Records the spec will produce: lets callers size things without generating."""
        return self.subjects * self.intervals * self.forms_per_interval


@dataclass
class StudyData:
    """All seeded rows of one study, each list in its endpoint's default order."""

    study: dict
    sites: list[dict] = field(default_factory=list)
    forms: list[dict] = field(default_factory=list)
    intervals: list[dict] = field(default_factory=list)
    variables: list[dict] = field(default_factory=list)
    subjects: list[dict] = field(default_factory=list)
    visits: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    record_revisions: list[dict] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)
    codings: list[dict] = field(default_factory=list)
    users: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Clinical catalogue
# --------------------------------------------------------------------------------------
# A variable is (variableName, variableType, label, value source). Value sources:
#   DATE: None (the visit date is used, so dates agree with the visit they belong to);
#   INTEGER/NUMBER: ("norm", mean, sd, lo, hi, decimals) -> a normally shaped pool;
#   otherwise: a tuple of read-back strings (repeats act as weights).

_N = "norm"
_YN_FALSE_MOSTLY = ("false",) * 4 + ("true",)
_YN_TRUE_MOSTLY = ("true",) * 4 + ("false",)
_NORMAL_ABN = ("NORMAL",) * 6 + ("ABNORMAL",) + ("NOT DONE",)
_GENERIC_MEMO = (
    "No additional comments.",
    "Assessment performed as per protocol.",
    "Subject tolerated procedure well.",
    "See source notes for details.",
    "Repeat measurement taken after 5 minutes rest.",
    "Subject arrived late; assessment performed in afternoon.",
)

#: Verbatim AE term -> MedDRA preferred term (the coding's ``code``).
AE_TERMS: dict[str, str] = {
    "Headache": "Headache",
    "Nausea": "Nausea",
    "Feeling tired": "Fatigue",
    "Dizziness": "Dizziness",
    "Bronchitis": "Bronchitis",
    "Loose stools": "Diarrhoea",
    "Skin rash": "Rash",
    "Back pain": "Back pain",
    "Trouble sleeping": "Insomnia",
    "Fever": "Pyrexia",
    "Joint pain": "Arthralgia",
    "Cough": "Cough",
    "Stomach ache": "Abdominal pain upper",
    "Sore throat": "Oropharyngeal pain",
    "Runny nose": "Rhinorrhoea",
    "High blood pressure": "Hypertension",
}
#: Verbatim medication -> WHODrug preferred name.
CM_TERMS: dict[str, str] = {
    "Tylenol": "PARACETAMOL",
    "Advil": "IBUPROFEN",
    "Lipitor": "ATORVASTATIN",
    "Metformin": "METFORMIN",
    "Lisinopril": "LISINOPRIL",
    "Aspirin": "ACETYLSALICYLIC ACID",
    "Omeprazole": "OMEPRAZOLE",
    "Ventolin": "SALBUTAMOL",
    "Synthroid": "LEVOTHYROXINE SODIUM",
    "Zoloft": "SERTRALINE",
    "Amoxicillin": "AMOXICILLIN",
    "Vitamin D3": "COLECALCIFEROL",
}

_Var = tuple[str, str, str, Any]

#: (formKey, formName, variables). REG comes first: every subject has it at Screening.
FORM_CATALOGUE: tuple[tuple[str, str, tuple[_Var, ...]], ...] = (
    (
        "REG",
        "Registration",
        (
            ("regdt", "DATE", "Date of informed consent", None),
            (
                "reginit",
                "TEXT",
                "Subject initials",
                tuple(a + b + c for a in "ABJKMRS" for b in "-DEL" for c in "ACHMT"),
            ),
            ("regyob", "INTEGER", "Year of birth", (_N, 1972, 12, 1940, 2006, 0)),
            ("regsex", "RADIO", "Sex at birth", ("M", "F")),
            ("regelig", "CHECKBOX", "All eligibility criteria met", _YN_TRUE_MOSTLY),
            ("regcmt", "MEMO", "Registration comments", _GENERIC_MEMO),
        ),
    ),
    (
        "DM",
        "Demographics",
        (
            ("dmdt", "DATE", "Date of assessment", None),
            ("dmage", "INTEGER", "Age (years)", (_N, 52, 12, 18, 85, 0)),
            ("dmrace", "RADIO", "Race", ("1",) * 6 + ("2", "2", "3", "4", "5", "6")),
            ("dmethnic", "RADIO", "Ethnicity", ("1", "2", "2", "2", "99")),
            ("dmheight", "NUMBER", "Height (cm)", (_N, 170, 10, 145, 205, 1)),
            ("dmweight", "NUMBER", "Weight (kg)", (_N, 78, 15, 40, 150, 1)),
            ("dmsmoke", "RADIO", "Smoking status", ("NEVER", "NEVER", "FORMER", "CURRENT")),
        ),
    ),
    (
        "MH",
        "Medical History",
        (
            ("mhdt", "DATE", "Date of assessment", None),
            (
                "mhterm",
                "TEXT",
                "Medical history term",
                (
                    "Hypertension",
                    "Type 2 diabetes mellitus",
                    "Asthma",
                    "Hyperlipidaemia",
                    "Osteoarthritis",
                    "Migraine",
                    "Depression",
                    "Gastro-oesophageal reflux disease",
                    "Hypothyroidism",
                    "Atrial fibrillation",
                ),
            ),
            (
                "mhcat",
                "RADIO",
                "Body system",
                ("CARDIOVASCULAR", "RESPIRATORY", "METABOLIC", "NEUROLOGICAL", "OTHER"),
            ),
            ("mhstyr", "INTEGER", "Year of onset", (_N, 2012, 6, 1990, 2024, 0)),
            ("mhongo", "CHECKBOX", "Condition ongoing", _YN_TRUE_MOSTLY),
            ("mhcmt", "MEMO", "Comments", _GENERIC_MEMO),
        ),
    ),
    (
        "VS",
        "Vital Signs",
        (
            ("vsdt", "DATE", "Date of measurement", None),
            ("vssysbp", "INTEGER", "Systolic blood pressure (mmHg)", (_N, 128, 15, 85, 200, 0)),
            ("vsdiabp", "INTEGER", "Diastolic blood pressure (mmHg)", (_N, 80, 10, 50, 120, 0)),
            ("vspulse", "INTEGER", "Pulse (beats/min)", (_N, 72, 11, 40, 130, 0)),
            ("vstemp", "NUMBER", "Temperature (C)", (_N, 36.8, 0.4, 35.5, 39.5, 1)),
            ("vsresp", "INTEGER", "Respiratory rate (breaths/min)", (_N, 16, 2, 10, 30, 0)),
            ("vsweight", "NUMBER", "Weight (kg)", (_N, 78, 15, 40, 150, 1)),
            ("vspos", "RADIO", "Position", ("SITTING", "SITTING", "SUPINE", "STANDING")),
            ("vsnd", "CHECKBOX", "Vital signs not done", ("false",) * 19 + ("true",)),
        ),
    ),
    (
        "AE",
        "Adverse Events",
        (
            ("aestdt", "DATE", "Start date", None),
            ("aeterm", "TEXT", "Adverse event (verbatim term)", tuple(AE_TERMS)),
            ("aesev", "RADIO", "Severity", ("MILD", "MILD", "MODERATE", "SEVERE")),
            ("aeser", "RADIO", "Seriousness", ("Non-Serious",) * 9 + ("Serious",)),
            (
                "aerel",
                "RADIO",
                "Relationship to study drug",
                ("NOT RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE"),
            ),
            ("aedur", "INTEGER", "Duration (days)", (_N, 6, 4, 1, 60, 0)),
            ("aeongo", "CHECKBOX", "Ongoing", _YN_FALSE_MOSTLY),
            ("aedesc", "MEMO", "Event description", _GENERIC_MEMO),
        ),
    ),
    (
        "CM",
        "Concomitant Medications",
        (
            ("cmstdt", "DATE", "Start date", None),
            ("cmtrt", "TEXT", "Medication (trade or generic name)", tuple(CM_TERMS)),
            (
                "cmdose",
                "NUMBER",
                "Dose per administration",
                ("2.5", "5.0", "10.0", "20.0", "40.0", "81.0", "200.0", "500.0", "1000.0"),
            ),
            ("cmdosu", "RADIO", "Dose unit", ("mg", "mg", "mg", "mcg", "mL", "IU")),
            ("cmroute", "RADIO", "Route", ("ORAL",) * 5 + ("TOPICAL", "INHALED", "IV", "SC")),
            ("cmongo", "CHECKBOX", "Ongoing", _YN_TRUE_MOSTLY),
            (
                "cmindc",
                "TEXT",
                "Indication",
                ("Pain", "Hypertension", "Hyperlipidaemia", "Prophylaxis", "Asthma", "Infection"),
            ),
        ),
    ),
    (
        "LB",
        "Laboratory Results",
        (
            ("lbdt", "DATE", "Date of sample collection", None),
            ("lbhgb", "NUMBER", "Haemoglobin (g/dL)", (_N, 13.8, 1.4, 8, 19, 1)),
            ("lbwbc", "NUMBER", "White blood cells (10^9/L)", (_N, 6.8, 1.8, 2, 18, 1)),
            ("lbplt", "INTEGER", "Platelets (10^9/L)", (_N, 250, 55, 80, 500, 0)),
            ("lbalt", "INTEGER", "ALT (U/L)", (_N, 25, 10, 5, 150, 0)),
            ("lbcreat", "NUMBER", "Creatinine (mg/dL)", (_N, 0.95, 0.2, 0.4, 2.5, 2)),
            ("lbfast", "CHECKBOX", "Fasting sample", _YN_TRUE_MOSTLY),
            ("lbclsig", "RADIO", "Clinically significant abnormality", ("N",) * 9 + ("Y",)),
        ),
    ),
    (
        "EX",
        "Study Drug Exposure",
        (
            ("exdt", "DATE", "Date dispensed", None),
            ("exdose", "NUMBER", "Daily dose (mg)", ("50.0", "100.0", "100.0", "150.0")),
            (
                "exlot",
                "TEXT",
                "Kit / lot number",
                tuple(f"LOT-24{m}{n:03d}" for m in "ABC" for n in range(1, 31, 3)),
            ),
            ("exdisp", "INTEGER", "Tablets dispensed", ("28", "56", "56", "60", "84")),
            ("exret", "INTEGER", "Tablets returned", (_N, 4, 3, 0, 20, 0)),
            ("excomp", "RADIO", "Compliance", ("GOOD",) * 5 + ("POOR",)),
            ("exmiss", "CHECKBOX", "Any doses missed", _YN_FALSE_MOSTLY),
        ),
    ),
    (
        "EG",
        "12-Lead ECG",
        (
            ("egdt", "DATE", "Date of ECG", None),
            ("eghr", "INTEGER", "Heart rate (beats/min)", (_N, 70, 11, 40, 130, 0)),
            ("egpr", "INTEGER", "PR interval (ms)", (_N, 160, 20, 100, 260, 0)),
            ("egqrs", "INTEGER", "QRS duration (ms)", (_N, 95, 10, 60, 150, 0)),
            ("egqtcf", "INTEGER", "QTcF (ms)", (_N, 415, 20, 340, 520, 0)),
            (
                "egint",
                "RADIO",
                "Overall interpretation",
                ("NORMAL",) * 6 + ("ABNORMAL NCS", "ABNORMAL CS"),
            ),
            ("egcmt", "MEMO", "Comments", _GENERIC_MEMO),
        ),
    ),
    (
        "PE",
        "Physical Examination",
        (
            ("pedt", "DATE", "Date of examination", None),
            ("pegen", "RADIO", "General appearance", _NORMAL_ABN),
            ("pecv", "RADIO", "Cardiovascular", _NORMAL_ABN),
            ("peresp", "RADIO", "Respiratory", _NORMAL_ABN),
            ("peskin", "RADIO", "Skin", _NORMAL_ABN),
            ("peabn", "CHECKBOX", "Clinically significant findings", _YN_FALSE_MOSTLY),
            ("pecmt", "MEMO", "Comments", _GENERIC_MEMO),
        ),
    ),
    (
        "QS",
        "Patient Reported Outcomes",
        (
            ("qsdt", "DATE", "Date completed", None),
            ("qspain", "INTEGER", "Pain score (0-10)", (_N, 4, 2.5, 0, 10, 0)),
            ("qsfatig", "INTEGER", "Fatigue score (0-10)", (_N, 4, 2.5, 0, 10, 0)),
            ("qsqol", "NUMBER", "EQ-5D index", (_N, 0.78, 0.12, 0.1, 1.0, 2)),
            ("qsby", "RADIO", "Completed by", ("SUBJECT",) * 7 + ("CAREGIVER",)),
            ("qsdone", "CHECKBOX", "Questionnaire fully completed", _YN_TRUE_MOSTLY),
            ("qscmt", "MEMO", "Comments", _GENERIC_MEMO),
        ),
    ),
    (
        "DS",
        "Disposition",
        (
            ("dsdt", "DATE", "Date of status", None),
            (
                "dsdecod",
                "RADIO",
                "Subject status",
                ("ONGOING",) * 6
                + ("COMPLETED", "ADVERSE EVENT", "WITHDRAWAL BY SUBJECT", "LOST TO FOLLOW-UP"),
            ),
            ("dsterm", "TEXT", "Reason (specify)", ("N/A", "N/A", "Relocation", "Personal")),
            ("dsdays", "INTEGER", "Days on study", (_N, 120, 60, 1, 400, 0)),
            ("dstrt", "CHECKBOX", "Study treatment ongoing", _YN_TRUE_MOSTLY),
            ("dscmt", "MEMO", "Comments", _GENERIC_MEMO),
        ),
    ),
)

#: Screening fills its slots after REG in this order; later visits always start with
#: VS/AE/CM and rotate through the rest, so visits differ the way a real schedule does.
_SCREENING_ORDER = ("DM", "MH", "VS", "LB", "EG", "PE", "CM", "QS", "AE", "EX", "DS")
_RECURRING_ORDER = ("VS", "AE", "CM", "LB", "EX", "EG", "QS", "PE", "DS", "DM", "MH")
#: formKey -> (coded variable, dictionaryName, dictionaryVersion, verbatim -> code).
CODED_FORMS = {
    "AE": ("aeterm", "MedDRA", "27.0", AE_TERMS),
    "CM": ("cmtrt", "WHODrug", "Global B3 Mar 2024", CM_TERMS),
}

_CITIES = (
    "Minneapolis",
    "Chicago",
    "New York",
    "Boston",
    "Houston",
    "Toronto",
    "Denver",
    "Seattle",
    "San Diego",
    "Atlanta",
    "London",
    "Berlin",
    "Madrid",
    "Paris",
    "Melbourne",
    "Amsterdam",
)
FIRST_NAMES = (
    "William", "Maria", "James", "Aisha", "Robert", "Chen", "Laura", "Daniel",
    "Sofia", "Ahmed", "Emma", "Lucas", "Priya", "Noah", "Hannah", "Mateo",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Garcia", "Johnson", "Khan", "Brown", "Wang", "Muller", "Rossi",
    "Novak", "Okafor", "Dubois", "Larsen", "Patel", "Kim", "Silva", "Cohen",
)  # fmt: skip
#: (role name, description, level, type); user i gets role i % len.
ROLES = (
    ("Study Coordinator", "Enters and maintains subject data at the site", 3, "Site"),
    ("Clinical Research Associate", "Monitors sites and raises data queries", 4, "Sponsor"),
    ("Data Manager", "Cleans data and codes terms", 5, "Sponsor"),
    ("Principal Investigator", "Signs off subject casebooks", 3, "Site"),
    ("Medical Monitor", "Reviews safety data", 5, "Sponsor"),
)
ENTRY_ROLES = ("Study Coordinator", "Principal Investigator")
_MONITOR_ROLES = ("Clinical Research Associate", "Medical Monitor")
CODER_ROLES = ("Data Manager",)
_KEYWORDS = (
    ("Data Entry Error", "DEE"),
    ("Protocol Deviation", "PD"),
    ("Source Data Verified", "SDV"),
    ("Needs Review", "NR"),
)
_WEEKS = (2, 4, 8, 12, 16, 24, 36, 52)

_Q_OPEN = (
    "Please verify against source.",
    "Value outside expected range, please confirm.",
    "Missing value: please enter or mark as not done.",
    "Date inconsistent with visit date, please check.",
    "Please clarify the entry.",
)
_Q_ANSWER = (
    "Verified against source, value is correct.",
    "Corrected per source document.",
    "Value entered.",
    "Transcription error fixed.",
)
_Q_CLOSE = ("Response accepted, closing query.", "Resolved.", "Closed after SDV.")
_Q_FOLLOW_UP = ("Please clarify the entry.", "Answer does not match source, please re-check.")
_Q_REOPEN = ("Re-opening: correction not reflected in the record.",)
_Q_DESC = {
    "question": ("Out of range", "Missing value", "Please verify", "Inconsistent date"),
    "record": ("Record incomplete", "Please review record", "Visit date mismatch"),
    "subject": ("Eligibility check", "Informed consent date missing", "Subject status review"),
}
_Q_TYPES = (None, None, None, None, "Manual", "Edit Check", "Auto")

# --------------------------------------------------------------------------------------
# Time: every instant is integer seconds since 2024-01-01 00:00:00 UTC.
# --------------------------------------------------------------------------------------

_ORIGIN = date(2024, 1, 1)
_DAY = 86_400
_N_DAYS = (date(2025, 12, 31) - _ORIGIN).days + 1
#: Every seeded timestamp is clamped here so seed data is always in the past.
_CAP = _N_DAYS * _DAY - 1
_DATES = tuple((_ORIGIN + timedelta(days=d)).isoformat() for d in range(_N_DAYS))
_FIRST_ENROLL_DAY = 31  # 2024-02-01, after sites, forms and users are set up
_LAST_VISIT_DAY = (date(2025, 11, 30) - _ORIGIN).days
_EDIT_END = (date(2025, 12, 10) - _ORIGIN).days * _DAY + 17 * 3600
#: One data-migration second that re-saves a slice of all records: a large same-second
#: block is what breaks ``>`` watermarks and page boundaries, so the seed must have one.
_BULK_T = (date(2025, 12, 15) - _ORIGIN).days * _DAY + 2 * 3600
_WORK_START = 8 * 3600
_WORK_SPAN = 10 * 3600
_BLANK = 0.05  # share of "" values in recordData
_EDIT_RATE = 0.2
_INACTIVE_USER_RATE = 0.14
#: Users the clinical random stream once drew (see `_skip_former_user_draws`).
_FORMER_USER_DRAWS = 5
#: Role index (into ROLES) of user i from the sixth on: site staff outnumber sponsor staff.
_ROLE_PATTERN = (0, 0, 0, 0, 3, 3, 1, 1, 2, 4)
#: reasonForChange of a seeded edit, picked by record.
EDIT_REASONS = (
    "Data correction",
    "Transcription error",
    "Updated per source document",
    "Corrected in response to query",
)
DELETE_REASON = "Entered in error"
#: Who re-saved records in the data migration second (not a study user).
MIGRATION = ("system", "System", "Data migration")
#: Bits of the record index in a revision's sort key (time, record, kind); 2**24 > ID_STRIDE.
_REV_BITS = 24
_ID_LIMIT = ID_STRIDE - 1


def _ts(t: int) -> str:
    """Format seconds-since-origin as ``YYYY-MM-DD HH:MM:SS``; table lookup keeps it cheap."""
    if t > _CAP:
        t = _CAP
    d, s = divmod(t, _DAY)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{_DATES[d]} {h:02d}:{m:02d}:{s:02d}"


def _value_pool(src: Any, cache: dict[str, str]) -> tuple[str, ...] | None:
    """Turn a catalogue value source into a tuple of shared, deduplicated strings."""
    if src is None:
        return None
    if src and src[0] == _N:
        _, mean, sd, lo, hi, dec = src
        nd = NormalDist(mean, sd)
        out = []
        for k in range(200):
            x = min(hi, max(lo, nd.inv_cdf((k + 0.5) / 200)))
            out.append(str(round(x)) if dec == 0 else f"{x:.{dec}f}")
        src = out
    return tuple(cache.setdefault(v, v) for v in src)


def _extra_form(n: int) -> tuple[str, str, tuple[_Var, ...]]:
    """Build a generic form for specs that schedule more forms than the catalogue has."""
    p = f"f{n}"
    return (
        f"FORM{n}",
        f"Additional Form {n}",
        (
            (f"{p}dt", "DATE", "Assessment date", None),
            (f"{p}txt", "TEXT", "Free text", ("Alpha", "Bravo", "Charlie", "Delta")),
            (f"{p}int", "INTEGER", "Count", (_N, 10, 3, 0, 25, 0)),
            (f"{p}num", "NUMBER", "Measurement", (_N, 5.0, 1.2, 0.5, 12.0, 1)),
            (f"{p}rad", "RADIO", "Category", ("A", "B", "C")),
            (f"{p}chk", "CHECKBOX", "Confirmed", _YN_TRUE_MOSTLY),
            (f"{p}cmt", "MEMO", "Comments", _GENERIC_MEMO),
        ),
    )


def _work_time(day: int, r: float) -> int:
    """An instant during site working hours, since EDC entries cluster there."""
    return day * _DAY + _WORK_START + int(r * _WORK_SPAN)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _validate(spec: StudySpec) -> None:
    if spec.sites < 1 or spec.intervals < 1 or spec.forms_per_interval < 1:
        raise ValueError("sites, intervals and forms_per_interval must be >= 1")
    if spec.subjects < 0 or spec.users < 0 or spec.study_id < 0:
        raise ValueError("subjects, users and study_id must be >= 0")
    if spec.query_rate < 0 or not 0 <= spec.closed_query_rate <= 1:
        raise ValueError("query_rate must be >= 0 and closed_query_rate in [0, 1]")
    if not 0 <= spec.soft_deleted_rate <= 1:
        raise ValueError("soft_deleted_rate must be in [0, 1]")
    # Codings (<= 1 per record) and queries (<= ceil(rate) per record) share the id stride.
    if spec.record_count * max(2, math.ceil(spec.query_rate)) > _ID_LIMIT:
        raise ValueError("too many rows for one study's id range (ids are offset by study_id)")


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def nth_site_name(i: int) -> str:
    """The i-th site's name: a city, numbered once every city has a site."""
    city = _CITIES[i % len(_CITIES)]
    return city if i < len(_CITIES) else f"{city} {i // len(_CITIES) + 1}"


def role_row(
    name: str, description: str, level: int, rtype: str, role_id: str, created: str,
    modified: str, community_id: int,
) -> dict:  # fmt: skip
    """A Role as the API sends it (dates as ts strings, see api-behaviour.md §3)."""
    return {
        "dateCreated": created,
        "dateModified": modified,
        "roleId": role_id,
        "communityId": community_id,
        "name": name,
        "description": description,
        "level": level,
        "type": rtype,
        "inactive": False,
    }


def user_row(
    user_id: str, login: str, first: str, last: str, active: bool, role: dict
) -> dict:  # fmt: skip
    """A User as the API sends it; shared by the seed and `add_users`."""
    return {
        "userId": user_id,
        "login": login,
        "firstName": first,
        "lastName": last,
        "email": f"{login}@example.com",
        "userActiveInStudy": active,
        "roles": [dict(role)],
    }


def unique_login(first: str, last: str, taken: set[str]) -> str:
    """First initial and last name, numbered when taken; adds the result to `taken`."""
    login = stem = (first[0] + last).lower()
    k = 1
    while login in taken:
        k += 1
        login = f"{stem}{k}"
    taken.add(login)
    return login


def _generate_users(spec: StudySpec) -> list[dict]:
    """Users in login order, from a random stream of their own so that their number leaves
    every clinical row as it is. The first five hold one role each; then site staff come
    more often than sponsor staff, and about one in seven has left the study."""
    urng = random.Random(f"imednet-seed-users:{spec.seed}:{spec.study_id}:{spec.study_key}")
    rnd = urng.random
    roles = []
    for i, (name, desc, level, rtype) in enumerate(ROLES):
        t = _work_time(2 + i, rnd())
        roles.append(
            role_row(
                name, desc, level, rtype, _uuid(urng), _ts(t), _ts(t + 3 * _DAY), spec.study_id
            )
        )
    users: list[dict] = []
    logins: set[str] = set()
    for i in range(spec.users):
        first = FIRST_NAMES[(i + int(rnd() * 4)) % len(FIRST_NAMES)]
        last = LAST_NAMES[(i * 7 + int(rnd() * 3)) % len(LAST_NAMES)]
        login = unique_login(first, last, logins)
        role = roles[i if i < len(roles) else _ROLE_PATTERN[i % len(_ROLE_PATTERN)]]
        left = rnd() < _INACTIVE_USER_RATE or (spec.users >= 2 and i == spec.users - 1)
        users.append(user_row(_uuid(urng), login, first, last, not left, role))
    users.sort(key=lambda u: u["login"])
    return users


def generate_study(spec: StudySpec) -> StudyData:
    """Build one study's rows; the same spec always yields identical output.

    The cyclic GC is paused meanwhile: the rows hold no cycles, yet hundreds of thousands of
    new dicts trigger repeated full collections that cost about a third of the run time.
    """
    _validate(spec)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(spec)
    finally:
        if was_enabled:
            gc.enable()


def _revisions(
    records: list[dict], keys: list[int], entry_people: list[tuple[str, str]], base: int
) -> list[dict]:
    """Every record's audit trail, numbered in time order as a live system's would be (ties
    in record order, then entry before change). Site staff enter and edit the records of
    their subjects; the migration is the system's."""
    keys.sort()
    record_mask = (1 << _REV_BITS) - 1
    key_shift = _REV_BITS + 2
    n_entry = len(entry_people)
    counters = [0] * len(records)  # recordRevision << 16 | dataRevision, per record
    stamps: dict[int, str] = {}
    revisions: list[dict] = []
    rev_id = base
    for key in keys:
        kind = key & 3
        index = (key >> 2) & record_mask
        rec = records[index]
        t = key >> key_shift
        stamp = stamps.get(t)
        if stamp is None:
            stamp = stamps[t] = _ts(t)
        count = counters[index] + (1 << 16) + (kind < 2)
        counters[index] = count
        if kind == 3:
            login, role, reason = MIGRATION
        else:
            login, role = entry_people[(rec["subjectId"] - base - 1) % n_entry]
            reason = (
                "" if kind == 0 else DELETE_REASON if kind == 2 else
                EDIT_REASONS[index % len(EDIT_REASONS)]
            )  # fmt: skip
        rev_id += 1
        revisions.append(
            {
                "studyKey": rec["studyKey"],
                "recordRevisionId": rev_id,
                "recordId": rec["recordId"],
                "recordOid": rec["recordOid"],
                "recordRevision": count >> 16,
                "dataRevision": count & 0xFFFF,
                "recordStatus": rec["recordStatus"],
                "subjectId": rec["subjectId"],
                "subjectOid": rec["subjectOid"],
                "subjectKey": rec["subjectKey"],
                "siteId": rec["siteId"],
                "formKey": rec["formKey"],
                "intervalId": rec["intervalId"],
                "role": role,
                "user": login,
                "reasonForChange": reason,
                "deleted": kind == 2,
                "dateCreated": stamp,
            }
        )
    return revisions


def _generate(spec: StudySpec) -> StudyData:
    """One study from one random stream, part by part in a fixed order: every part draws
    from the stream, so reordering them would change every seed's data."""
    rng = random.Random(f"imednet-seed:{spec.seed}:{spec.study_id}:{spec.study_key}")
    _skip_former_user_draws(rng)
    users = _generate_users(spec)
    form_set = _form_set(spec, rng.random)
    timeline = _timeline(spec)
    schedule = _schedule(spec, form_set.extra_keys)
    enroll, subject_sites = _enrollment(spec, rng, timeline)
    visit_t = _visit_times(enroll, timeline, rng.random)
    site_names = [nth_site_name(i) for i in range(spec.sites)]
    subjects, site_last = _subject_rows(
        spec, enroll, subject_sites, visit_t, site_names, rng.random
    )
    sites = _site_rows(spec, site_names, site_last, rng.random)
    clinical = _Clinical(spec, rng.random, _staff(users), form_set.labels, timeline)
    plans = _visit_plans(spec, schedule, timeline, form_set)
    n_int = spec.intervals
    for idx in sorted(range(len(visit_t)), key=visit_t.__getitem__):  # ids follow time
        s, j = divmod(idx, n_int)
        clinical.add_visit(subjects[s], s, j, visit_t[idx], enroll[s] // _DAY, plans[j])
    return StudyData(
        study=_study_row(spec),
        sites=sites,
        forms=form_set.forms,
        intervals=_interval_rows(spec, schedule, timeline, form_set),
        variables=form_set.variables,
        subjects=subjects,
        visits=clinical.visits,
        records=clinical.records,
        record_revisions=_revisions(
            clinical.records, clinical.rev_keys, clinical.staff.entry, spec.study_id * ID_STRIDE
        ),
        queries=clinical.numbered_queries(),
        codings=clinical.codings,
        users=users,
    )


def _study_row(spec: StudySpec) -> dict:
    key = spec.study_key
    return {
        "sponsorKey": str(100 + spec.study_id),
        "studyKey": key,
        "studyId": spec.study_id,
        "studyName": f"{key} Phase II Efficacy and Safety Study",
        "studyDescription": f"Randomised, double-blind study {key} (emulator seed {spec.seed})",
        "studyType": "STUDY",
        "dateCreated": _ts(_work_time(1, 0.12)),
        "dateModified": _ts(_work_time(26, 0.8)),
    }


def _skip_former_user_draws(rng: random.Random) -> None:
    """Users once came from this stream, five by default: take what they took, so every
    seed keeps the clinical data it had (tests and benchmarks pick rows by position)."""
    rnd = rng.random
    for _ in ROLES:
        rnd(), rng.getrandbits(128)
    for _ in range(_FORMER_USER_DRAWS):
        rnd(), rnd(), rng.getrandbits(128)


@dataclass(frozen=True)
class _Staff:
    """Who does what in the seeded history; anyone when nobody holds the roles."""

    #: (login, role name) of those who enter and edit data.
    entry: list[tuple[str, str]]
    monitors: list[str]
    #: Full names, as codings name their coder.
    coders: list[str]


def _staff(users: list[dict]) -> _Staff:
    by_role: dict[str, list[dict]] = {}
    for user in users:
        by_role.setdefault(user["roles"][0]["name"], []).append(user)

    def people(role_names: tuple[str, ...]) -> list[dict]:
        found = [u for r in role_names for u in by_role.get(r, [])]
        return found or users

    return _Staff(
        entry=[(u["login"], u["roles"][0]["name"]) for u in people(ENTRY_ROLES)]
        or [("system", "System")],
        monitors=[u["login"] for u in people(_MONITOR_ROLES)] or ["system"],
        coders=[f"{u['firstName']} {u['lastName']}" for u in people(CODER_ROLES)] or ["System"],
    )


#: How the record loop fills one variable: (name, value pool or None for the visit date,
#: scale from a uniform draw to a pool index).
_Fill = tuple[str, Any, float]


@dataclass
class _FormSet:
    """Forms and variables, and what the record loop needs of them prebuilt."""

    catalogue: list[tuple[str, str, tuple[_Var, ...]]]
    forms: list[dict] = field(default_factory=list)
    variables: list[dict] = field(default_factory=list)
    by_key: dict[str, dict] = field(default_factory=dict)
    #: formKey -> (variable names, how each is filled).
    fill: dict[str, tuple[tuple[str, ...], tuple[_Fill, ...]]] = field(default_factory=dict)
    #: (formKey, variableName) -> label, for query descriptions.
    labels: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def extra_keys(self) -> tuple[str, ...]:
        """Form keys beyond the catalogue's, for schedules longer than it."""
        return tuple(c[0] for c in self.catalogue[len(FORM_CATALOGUE) :])

    def date_question(self, form_key: str) -> tuple[str, str]:
        """(formName, variableName) of a visit's date: the first variable of its first form."""
        return self.by_key[form_key]["formName"], self.fill[form_key][0][0]


def _form_set(spec: StudySpec, rnd: Callable[[], float]) -> _FormSet:
    n_forms = max(len(FORM_CATALOGUE), spec.forms_per_interval + 1)
    out = _FormSet(
        list(FORM_CATALOGUE) + [_extra_form(n) for n in range(len(FORM_CATALOGUE) + 1, n_forms + 1)]
    )
    base = spec.study_id * ID_STRIDE
    strings: dict[str, str] = {}
    for fi, (fkey, fname, fvars) in enumerate(out.catalogue):
        revision = 1 + int(rnd() * 3)
        t_created = _work_time(3 + fi % 3, rnd())
        t_mod = t_created if revision == 1 else _work_time(10 + int(rnd() * 15), rnd())
        form = _form_row(spec.study_key, base + fi + 1, fkey, fname, revision)
        form["dateCreated"], form["dateModified"] = _ts(t_created), _ts(t_mod)
        out.forms.append(form)
        out.by_key[fkey] = form
        for seq, (vname, vtype, label, _) in enumerate(fvars, start=1):
            out.labels[(fkey, vname)] = label
            var_id = base + len(out.variables) + 1
            out.variables.append(_variable_row(form, var_id, seq, vname, vtype, label))
        fill = tuple(_fill(vname, src, strings) for vname, _, _, src in fvars)
        out.fill[fkey] = (tuple(v[0] for v in fvars), fill)
    return out


def _fill(name: str, src: Any, strings: dict[str, str]) -> _Fill:
    pool = _value_pool(src, strings)
    if pool is None:
        return (name, None, 0.0)
    # The extra trailing element guards int(r * scale) against float rounding.
    return (name, (*pool, pool[-1]), len(pool) / (1 - _BLANK))


def _form_row(study_key: str, form_id: int, fkey: str, fname: str, revision: int) -> dict:
    """A Form as the API sends it; its dates are set by the caller, as the last fields."""
    return {
        "studyKey": study_key,
        "formId": form_id,
        "formKey": fkey,
        "formName": fname,
        "formType": "Subject",
        "revision": revision,
        "embeddedLog": False,
        "enforceOwnership": False,
        "userAgreement": False,
        "subjectRecordReport": fkey == "REG",
        "unscheduledVisit": fkey in ("AE", "CM"),
        "otherForms": False,
        "eproForm": fkey == "QS",
        "allowCopy": fkey in ("VS", "LB", "CM"),
        "disabled": False,
    }


def _variable_row(
    form: dict, var_id: int, seq: int, vname: str, vtype: str, label: str
) -> dict:  # fmt: skip
    """A Variable as the API sends it, created with its form."""
    return {
        "studyKey": form["studyKey"],
        "variableId": var_id,
        "variableType": vtype,
        "variableName": vname,
        "sequence": seq,
        "revision": 1,
        "disabled": False,
        "dateCreated": form["dateCreated"],
        "dateModified": form["dateCreated"],
        "formId": form["formId"],
        "variableOid": f"VAR-{var_id}",
        "deleted": False,
        "formKey": form["formKey"],
        "formName": form["formName"],
        "label": label,
        "blinded": False,
    }


def _schedule(spec: StudySpec, extras: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Form keys of each interval: Screening opens with REG; later visits share a core and
    rotate through the rest."""
    fpi = spec.forms_per_interval
    screening = ("REG", *(_SCREENING_ORDER + extras)[: fpi - 1])
    recurring = _RECURRING_ORDER + extras
    core = recurring[: min(3, fpi)]
    rest = recurring[3:]
    schedule: list[tuple[str, ...]] = [screening]
    for j in range(1, spec.intervals):
        k = fpi - len(core)
        start = ((j - 1) * max(1, k)) % len(rest)
        schedule.append(core + tuple(rest[(start + x) % len(rest)] for x in range(k)))
    return schedule


@dataclass(frozen=True)
class _Timeline:
    """The protocol's visit schedule: names, nominal days after enrollment, windows."""

    names: list[str]
    offsets: list[int]
    #: Days a visit may fall either side of its nominal day.
    slacks: list[int]
    #: Days over which subjects enroll, so the last visit of the last one stays in 2025.
    enroll_days: int


def _timeline(spec: StudySpec) -> _Timeline:
    """Screening, Baseline (day 14), then weeks after baseline; long schedules compressed."""
    offsets = [0]
    names = ["Screening"]
    for j in range(1, spec.intervals):
        if j == 1:
            offsets.append(14)
            names.append("Baseline")
        else:
            w = _WEEKS[j - 2] if j - 2 < len(_WEEKS) else 52 + 12 * (j - 1 - len(_WEEKS))
            offsets.append(14 + 7 * w)
            names.append(f"Week {w}")
    span_days = _LAST_VISIT_DAY - 3 - _FIRST_ENROLL_DAY
    max_schedule = span_days // 2
    if offsets[-1] > max_schedule:  # long schedules are compressed to stay in 2024-2025
        scale = max_schedule / offsets[-1]
        offsets = [round(o * scale) for o in offsets]
    slacks = [0] + [
        max(0, min(3, (offsets[j] - offsets[j - 1] - 1) // 3)) for j in range(1, spec.intervals)
    ]
    return _Timeline(names, offsets, slacks, span_days - offsets[-1])


def _interval_rows(
    spec: StudySpec, schedule: list[tuple[str, ...]], timeline: _Timeline, form_set: _FormSet
) -> list[dict]:
    base = spec.study_id * ID_STRIDE
    names, offsets, slacks = timeline.names, timeline.offsets, timeline.slacks
    t_int = _work_time(6, 0.3)
    intervals: list[dict] = []
    for j, sched in enumerate(schedule):
        date_form, date_q = form_set.date_question(sched[0])
        group = (1, "Screening") if j == 0 else (2, "Treatment")
        intervals.append(
            {
                "studyKey": spec.study_key,
                "intervalId": base + j + 1,
                "intervalName": names[j],
                "intervalDescription": f"{names[j]} visit",
                "intervalSequence": (j + 1) * 10,
                "intervalGroupId": base + group[0],
                "intervalGroupName": group[1],
                "timeline": "Start Date End Date",
                "definedUsingInterval": "" if j == 0 else names[0],
                "windowCalculationForm": "" if j == 0 else "Registration",
                "windowCalculationDate": "" if j == 0 else "regdt",
                "actualDateForm": date_form,
                "actualDate": date_q,
                "dueDateWillBeIn": offsets[j],
                "negativeSlack": slacks[j],
                "positiveSlack": slacks[j],
                "eproGracePeriod": 2 if "QS" in sched else 0,
                "forms": [
                    {
                        "formId": form_set.by_key[k]["formId"],
                        "formKey": k,
                        "formName": form_set.by_key[k]["formName"],
                    }
                    for k in sched
                ],
                "disabled": False,
                "dateCreated": _ts(t_int),
                "dateModified": _ts(t_int + (14 * _DAY if j % 3 == 2 else 0)),
            }
        )
    return intervals


def _enrollment(
    spec: StudySpec, rng: random.Random, timeline: _Timeline
) -> tuple[list[int], list[int]]:
    """Enrollment instants in time order, and each subject's site (busier sites weigh more)."""
    rnd = rng.random
    site_w = [0.5 + rnd() for _ in range(spec.sites)]
    enroll = sorted(
        _work_time(_FIRST_ENROLL_DAY + int(rnd() * timeline.enroll_days), rnd())
        for _ in range(spec.subjects)
    )
    return enroll, rng.choices(range(spec.sites), weights=site_w, k=spec.subjects)


def _visit_times(enroll: list[int], timeline: _Timeline, rnd: Callable[[], float]) -> list[int]:
    """Visit instants, flat [subject * intervals + interval]; later visits never precede
    earlier ones."""
    n_int = len(timeline.offsets)
    visit_t: list[int] = [0] * (len(enroll) * n_int)
    for s, e in enumerate(enroll):
        e_day = e // _DAY
        visit_t[s * n_int] = e
        for j in range(1, n_int):
            sl = timeline.slacks[j]
            day = e_day + timeline.offsets[j] + (int(rnd() * (2 * sl + 1)) - sl if sl else 0)
            visit_t[s * n_int + j] = _work_time(day, rnd())
    return visit_t


def _keyword_defs(spec: StudySpec) -> list[tuple[str, str, int]]:
    base = spec.study_id * ID_STRIDE
    return [(n, k, base + i + 1) for i, (n, k) in enumerate(_KEYWORDS)]


def _keyword(definition: tuple[str, str, int], added: str) -> dict:
    name, key, keyword_id = definition
    return {"keywordName": name, "keywordKey": key, "keywordId": keyword_id, "dateAdded": added}


def _subject_status(r: float) -> str:
    if r < 0.08:
        return "Screened"
    if r < 0.17:
        return "Withdrawn"
    return "Enrolled" if r < 0.55 else "Completed"


def _subject_rows(
    spec: StudySpec,
    enroll: list[int],
    subject_sites: list[int],
    visit_t: list[int],
    site_names: list[str],
    rnd: Callable[[], float],
) -> tuple[list[dict], list[int]]:
    """Subjects in enrollment order, keyed per site (``01-001``), and each site's latest
    enrollment instant."""
    n_sites, n_int, base = spec.sites, spec.intervals, spec.study_id * ID_STRIDE
    per_site = [0] * n_sites
    for si in subject_sites:
        per_site[si] += 1
    seq_w = max(3, len(str(max(per_site, default=0))))
    site_w_digits = max(2, len(str(n_sites)))
    kw_defs = _keyword_defs(spec)
    site_seq = [0] * n_sites
    site_last = [0] * n_sites
    subjects: list[dict] = []
    for s, (t0, si) in enumerate(zip(enroll, subject_sites, strict=True)):
        site_seq[si] += 1
        site_last[si] = max(site_last[si], t0)
        status = _subject_status(rnd())
        t_mod = visit_t[s * n_int + n_int - 1] if status in ("Completed", "Withdrawn") else t0
        keywords = []
        if rnd() < 0.1:
            definition = kw_defs[int(rnd() * len(kw_defs))]
            t_mod = max(t_mod, t0 + _DAY)
            keywords.append(_keyword(definition, _ts(t_mod)))
        sid = base + s + 1
        t0_s = _ts(t0)
        subjects.append(
            {
                "studyKey": spec.study_key,
                "subjectId": sid,
                "subjectOid": f"OID-{sid}",
                "subjectKey": f"{si + 1:0{site_w_digits}d}-{site_seq[si]:0{seq_w}d}",
                "subjectStatus": status,
                "siteId": base + si + 1,
                "siteName": site_names[si],
                "deleted": False,
                "enrollmentStartDate": t0_s,
                "dateCreated": t0_s,
                "dateModified": _ts(t_mod) if t_mod != t0 else t0_s,
                "keywords": keywords,
            }
        )
    return subjects, site_last


def _site_rows(
    spec: StudySpec, site_names: list[str], site_last: list[int], rnd: Callable[[], float]
) -> list[dict]:
    """Sites, a quarter of the later ones closed to enrollment a month after their last."""
    base = spec.study_id * ID_STRIDE
    sites: list[dict] = []
    for i, name in enumerate(site_names):
        t_c = _work_time(2 + (i * 3) % 27, rnd())
        closed = i > 0 and rnd() < 0.25
        t_m = max(site_last[i], t_c) + 30 * _DAY if closed else t_c + 2 * _DAY
        sites.append(
            {
                "studyKey": spec.study_key,
                "siteId": base + i + 1,
                "siteName": name,
                "siteEnrollmentStatus": "Enrollment Closed" if closed else "Enrollment Open",
                "dateCreated": _ts(t_c),
                "dateModified": _ts(min(t_m, _EDIT_END)),
            }
        )
    return sites


#: What a visit of one interval holds, prebuilt: (intervalId, intervalName, visitDateForm,
#: visitDateQuestion, [(form, how its variables are filled, variable names, coding)]).
_VisitPlan = tuple[int, str, str, str, list[tuple[dict, tuple[_Fill, ...], tuple[str, ...], Any]]]


def _visit_plans(
    spec: StudySpec, schedule: list[tuple[str, ...]], timeline: _Timeline, form_set: _FormSet
) -> list[_VisitPlan]:
    base = spec.study_id * ID_STRIDE
    fill = form_set.fill
    return [
        (
            base + j + 1,
            timeline.names[j],
            *form_set.date_question(sched[0]),
            [(form_set.by_key[k], fill[k][1], fill[k][0], CODED_FORMS.get(k)) for k in sched],
        )
        for j, sched in enumerate(schedule)
    ]


def _comment_kind(
    seq: int, n_comments: int, closed: bool, reopened: bool
) -> tuple[str, bool, tuple[str, ...], bool]:
    """(annotationStatus, written by the monitor, texts to pick from, closed) of a query's
    comment number `seq`: the monitor opens, site staff answer, the monitor closes, re-opens
    or follows up."""
    if seq == 1:
        return "Monitor Query Open", True, _Q_OPEN, False
    if (closed and seq == n_comments) or (reopened and seq == 2):
        return "Monitor Query Closed", True, _Q_CLOSE, True
    if reopened:
        return "Monitor Query Re-opened", True, _Q_REOPEN, False
    if seq == 3:  # open, 3 comments: monitor follows up the answer
        return "Monitor Query Open", True, _Q_FOLLOW_UP, False
    return "Monitor Query Answered", False, _Q_ANSWER, False


class _Clinical:
    """Visits in time order with their records, audit keys, codings and queries: the bulk of
    a study, drawn visit by visit from the study's one stream. Ids are counted from the rows
    made so far, so they follow time as the visits do."""

    def __init__(
        self,
        spec: StudySpec,
        rnd: Callable[[], float],
        staff: _Staff,
        labels: dict[tuple[str, str], str],
        timeline: _Timeline,
    ) -> None:
        self.rnd = rnd
        self.study_key = spec.study_key
        self.base = spec.study_id * ID_STRIDE
        self.staff = staff
        self.labels = labels
        self.timeline = timeline
        self.kw_defs = _keyword_defs(spec)
        n_records = spec.record_count
        self.bulk_p = max(0.03, min(0.5, 150 / n_records)) if n_records else 0.0
        self.bulk_s = _ts(_BULK_T)
        self.del_rate = spec.soft_deleted_rate
        self.q_whole = int(spec.query_rate)
        self.q_frac = spec.query_rate - self.q_whole
        self.closed_rate = spec.closed_query_rate
        self.visits: list[dict] = []
        self.records: list[dict] = []
        #: Revision sort keys: (time, record index, kind); kind 0 entry, 1 edit, 2 soft
        #: delete, 3 migration. Integers sort fast and hold no objects.
        self.rev_keys: list[int] = []
        self.codings: list[dict] = []
        self.pending_q: list[tuple[int, int, dict]] = []
        self.desc_cache: dict[tuple[str, str], str] = {}

    def add_visit(
        self, subject: dict, s: int, j: int, t_v: int, enroll_day: int, plan: _VisitPlan
    ) -> None:
        """Subject number `s`'s visit of interval `j`, at `t_v`, with one record per form."""
        rnd = self.rnd
        v_day = t_v // _DAY
        vdate = _DATES[v_day]
        t_v_s = _ts(t_v)
        visit = self._visit_row(subject, j, v_day, t_v_s, enroll_day, plan)
        self.visits.append(visit)
        # Edits of this visit's records happen in one later session (shared second).
        t_edit = min(_work_time(v_day + 1 + int(rnd() * 20), rnd()), _EDIT_END)
        edit = (t_edit, _ts(t_edit))
        e_login = self.staff.entry[s % len(self.staff.entry)][0]
        monitor = self.staff.monitors[(s + j) % len(self.staff.monitors)]
        for form, fill, vnames, coded in plan[4]:
            record = self._add_record(subject, visit, form, fill, vdate, (t_v, t_v_s), edit)
            if coded is not None:
                self._add_coding(subject, record, form, coded, v_day)
            self._add_queries(subject, record, vnames, v_day, (monitor, e_login))

    def _visit_row(
        self, subject: dict, j: int, v_day: int, t_v_s: str, enroll_day: int, plan: _VisitPlan
    ) -> dict:
        vdate = _DATES[v_day]
        if j == 0:
            start_d, end_d, due_d = vdate, _DATES[min(v_day + 14, _N_DAYS - 1)], None
        else:
            target = enroll_day + self.timeline.offsets[j]
            sl = self.timeline.slacks[j]
            start_d, end_d, due_d = _DATES[target - sl], _DATES[target + sl], _DATES[target]
        return {
            "studyKey": self.study_key,
            "visitId": self.base + len(self.visits) + 1,
            "intervalId": plan[0],
            "intervalName": plan[1],
            "subjectId": subject["subjectId"],
            "subjectKey": subject["subjectKey"],
            "startDate": start_d,
            "endDate": end_d,
            "dueDate": due_d,
            "visitDate": vdate,
            "visitDateForm": plan[2],
            "visitDateQuestion": plan[3],
            "deleted": False,
            "dateCreated": t_v_s,
            "dateModified": t_v_s,
        }

    def _add_record(
        self,
        subject: dict,
        visit: dict,
        form: dict,
        fill: tuple[_Fill, ...],
        vdate: str,
        entered: tuple[int, str],
        edit: tuple[int, str],
    ) -> dict:
        """A record of the visit, entered at `entered` and perhaps edited at `edit`, soft
        deleted, or re-saved by the migration: its revision keys go to `rev_keys`."""
        rnd = self.rnd
        data = {}
        for name, pool, scale in fill:
            r = rnd()
            if r < _BLANK:
                data[name] = ""
            elif pool is None:
                data[name] = vdate
            else:
                data[name] = pool[int((r - _BLANK) * scale)]
        status = "Record Incomplete" if "" in data.values() else "Record Complete"
        deleted, t_m_s = self._history(entered, edit)
        keywords = []
        if rnd() < 0.02:
            keywords.append(_keyword(self.kw_defs[int(rnd() * len(self.kw_defs))], t_m_s))
        rid = self.base + len(self.records) + 1
        record = {
            "studyKey": self.study_key,
            "intervalId": visit["intervalId"],
            "formId": form["formId"],
            "formKey": form["formKey"],
            "siteId": subject["siteId"],
            "recordId": rid,
            "recordOid": f"REC-{rid}",
            "recordType": "SUBJECT",
            "recordStatus": status,
            "deleted": deleted,
            "dateCreated": entered[1],
            "dateModified": t_m_s,
            "subjectId": subject["subjectId"],
            "subjectOid": subject["subjectOid"],
            "subjectKey": subject["subjectKey"],
            "visitId": visit["visitId"],
            "parentRecordId": 0,
            "keywords": keywords,
            "recordData": data,
        }
        self.records.append(record)
        return record

    def _history(self, entered: tuple[int, str], edit: tuple[int, str]) -> tuple[bool, str]:
        """(deleted, dateModified) of the next record, whose revision keys it adds."""
        rnd = self.rnd
        rec_key = len(self.records) << 2
        shift = _REV_BITS + 2
        r = rnd()
        deleted = r < self.del_rate
        self.rev_keys.append(entered[0] << shift | rec_key)
        if deleted or r < _EDIT_RATE:
            modified = edit[1]
            self.rev_keys.append(edit[0] << shift | rec_key | (2 if deleted else 1))
        else:
            modified = entered[1]
        if not deleted and rnd() < self.bulk_p:
            modified = self.bulk_s
            self.rev_keys.append(_BULK_T << shift | rec_key | 3)
        return deleted, modified

    def _add_coding(
        self, subject: dict, record: dict, form: dict, coded: tuple, v_day: int
    ) -> None:
        """The coding of the record's coded term, when it is not blank; a tenth re-coded."""
        cvar, dict_name, dict_ver, mapping = coded
        term = record["recordData"][cvar]
        if not term:
            return
        rnd = self.rnd
        t_c = _work_time(v_day + 2 + int(rnd() * 10), rnd())
        rev = 2 if rnd() < 0.1 else 1  # re-coded after a dictionary upversion
        coding_id = self.base + len(self.codings) + 1
        coders = self.staff.coders
        self.codings.append(
            {
                "studyKey": self.study_key,
                "siteName": subject["siteName"],
                "siteId": subject["siteId"],
                "subjectId": subject["subjectId"],
                "subjectKey": subject["subjectKey"],
                "formId": form["formId"],
                "formName": form["formName"],
                "formKey": form["formKey"],
                "revision": rev,
                "recordId": record["recordId"],
                "variable": cvar,
                "value": term,
                "codingId": coding_id,
                "code": mapping[term],
                "codedBy": coders[(coding_id + rev) % len(coders)],
                "reason": "Initial coding" if rev == 1 else "Recoded after dictionary upversion",
                "dictionaryName": dict_name,
                "dictionaryVersion": dict_ver,
                "dateCoded": _ts(t_c + (rev - 1) * 21 * _DAY),
            }
        )

    def _add_queries(
        self,
        subject: dict,
        record: dict,
        vnames: tuple[str, ...],
        v_day: int,
        people: tuple[str, str],
    ) -> None:
        """The record's queries (`query_rate` on average), numbered later in creation order;
        `people` is (monitor, site user) of the visit."""
        rnd = self.rnd
        rid = record["recordId"]
        for _ in range(self.q_whole + (1 if rnd() < self.q_frac else 0)):
            r = rnd()
            if r < 0.82:
                a_type, variable, q_rid = "question", vnames[int(rnd() * len(vnames))], rid
            elif r < 0.93:
                a_type, variable, q_rid = "record", "", rid
            else:
                a_type, variable, q_rid = "subject", "", 0
            desc = self._description(a_type, variable, record["formKey"])
            t_q = _work_time(v_day + 1 + int(rnd() * 14), rnd())
            comments, t_last = self._comments(t_q, people) if rnd() >= 0.05 else ([], t_q)
            query = {
                "studyKey": self.study_key,
                "subjectId": subject["subjectId"],
                "subjectOid": subject["subjectOid"],
                "annotationType": a_type,
                "annotationId": 0,  # assigned by `numbered_queries`, in creation order
                "type": _Q_TYPES[int(rnd() * len(_Q_TYPES))],
                "description": desc,
                "recordId": q_rid,
                "variable": variable,
                "subjectKey": subject["subjectKey"],
                "dateCreated": _ts(t_q),
                "dateModified": _ts(t_last),
                "queryComments": comments,
            }
            self.pending_q.append((min(t_q, _CAP), rid, query))

    def _description(self, a_type: str, variable: str, form_key: str) -> str:
        """A description for the query type; a variable's label follows, one string shared
        by every query of that description and variable."""
        descs = _Q_DESC[a_type]
        desc = descs[int(self.rnd() * len(descs))]
        if not variable:
            return desc
        key = (desc, self.labels[(form_key, variable)])
        cached = self.desc_cache.get(key)
        if cached is None:
            cached = self.desc_cache[key] = f"{key[0]}: {key[1]}"
        return cached

    def _comments(self, t_q: int, people: tuple[str, str]) -> tuple[list[dict], int]:
        """A comment thread opened at `t_q`: closed, re-opened, answered or just opened.
        Returns the comments and the instant of the last one."""
        rnd = self.rnd
        closed = rnd() < self.closed_rate
        n_c = 1 + int(rnd() * 3)
        if closed and n_c == 1:
            n_c = 2
        reopened = not closed and n_c == 3 and rnd() < 0.35
        comments: list[dict] = []
        t_last = t_q
        for seq in range(1, n_c + 1):
            status, by_monitor, pool, is_closed = _comment_kind(seq, n_c, closed, reopened)
            if seq > 1:
                t_last = _work_time(t_last // _DAY + 1 + int(rnd() * 10), rnd())
            comments.append(
                {
                    "sequence": seq,
                    "annotationStatus": status,
                    "user": people[0] if by_monitor else people[1],
                    "comment": pool[int(rnd() * len(pool))],
                    "closed": is_closed,
                    "date": _ts(t_last),
                }
            )
        return comments, t_last

    def numbered_queries(self) -> list[dict]:
        """The queries in creation order (ties by record), numbered in that order."""
        self.pending_q.sort(key=lambda x: (x[0], x[1]))
        queries: list[dict] = []
        for n, (_, _, query) in enumerate(self.pending_q, start=1):
            query["annotationId"] = self.base + n
            queries.append(query)
        return queries
