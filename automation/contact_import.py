"""Contacts from a CSV file: read it, map its columns, validate rows, upsert in batches.

The first half is pure: decoding, column mapping (detected from the header,
overridable), row validation and the plan of one batch (what to insert, what to
update, which stage changes and tags), all over plain data. The second half
does the I/O: one transaction per batch of `BATCH` rows with multi-row
statements, then the fit score and segment membership of the contacts it
touched, exactly as ingestion settles a batch of events.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from automation.thresholds import STAGES
from tracker.payload import EMAIL_RE, normalise_email

BATCH = 1000
"""Rows per transaction: one multi-row insert and one multi-row update each."""

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Largest file the admin page accepts (the CLI reads any size)."""

MAX_PROBLEMS = 1000
"""Skipped rows listed in a summary; beyond this only the count goes on."""

FIELDS = ("email", "first_name", "last_name", "company", "stage", "owner", "tags")
"""Contact fields a column can fill; any other column can become a custom attribute."""

IGNORE = "ignore"
TRAIT = "trait:"

SYNONYMS: dict[str, tuple[str, ...]] = {
    "email": ("email", "emailaddress", "mail", "mailaddress", "emailid"),
    "first_name": ("firstname", "first", "givenname", "forename", "prenom", "vorname"),
    "last_name": ("lastname", "last", "surname", "familyname", "nachname"),
    "company": (
        "company",
        "companyname",
        "organisation",
        "organization",
        "organisationname",
        "organizationname",
        "account",
        "accountname",
        "employer",
        "firma",
    ),
    "stage": ("stage", "lifecyclestage", "lifecycle", "leadstage", "leadstatus"),
    "owner": ("owner", "owneremail", "salesowner", "accountowner", "leadowner", "assignedto"),
    "tags": ("tags", "tag", "labels", "label"),
}
"""Header spellings (lower case, letters and digits only) recognised as each field."""

LIMITS = {"first_name": 200, "last_name": 200, "company": 200, "email": 320, "owner": 320}
TAG_LIMIT = 100
TRAIT_LIMIT = 1000


class ImportFileError(ValueError):
    """The file cannot be read as CSV (encoding, format, no header) or the mapping is wrong."""


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvText:
    """A decoded CSV file: its text, its header and the delimiter it uses."""

    text: str
    headers: tuple[str, ...]
    delimiter: str


def decode(data: bytes) -> CsvText:
    """Decode UTF-8 (with or without BOM), find the delimiter, read the header row."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ImportFileError(
            f"line {line} is not UTF-8 text: save the file as 'CSV UTF-8' and upload it again"
        ) from e
    first = text.split("\n", 1)[0]
    # Spreadsheets in many locales write ';' or tabs: take whichever the header uses most.
    delimiter = max((",", ";", "\t"), key=first.count)
    try:
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), None)
    except csv.Error as e:
        raise ImportFileError(f"line 1 is not CSV: {e}") from e
    headers = tuple(h.strip() for h in header or ())
    if not any(headers):
        raise ImportFileError("the file is empty: the first line must name the columns")
    return CsvText(text, headers, delimiter)


def records(source: CsvText) -> Iterator[tuple[int, list[str]]]:
    """Each data row with the line it starts on; blank rows are left out."""
    reader = csv.reader(io.StringIO(source.text, newline=""), delimiter=source.delimiter)
    try:
        next(reader, None)
        start = reader.line_num + 1
        for cells in reader:
            if any(c.strip() for c in cells):
                yield start, cells
            start = reader.line_num + 1
    except csv.Error as e:
        raise ImportFileError(f"line {reader.line_num} is not CSV: {e}") from e


def count_records(source: CsvText) -> int:
    """How many data rows the file has (the denominator of the progress)."""
    return sum(1 for _ in records(source))


# --- mapping --------------------------------------------------------------------------------


def _squash(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def trait_key(header: str) -> str:
    """The custom attribute a column becomes: `Job Title` -> `job_title`."""
    return re.sub(r"[^a-z0-9]+", "_", header.strip().lower()).strip("_")[:100] or "column"


def detect_mapping(headers: Sequence[str]) -> list[str]:
    """A target per column: a field by its name or a synonym, else a custom attribute.

    Only the first column for a field gets it; a later one becomes an attribute.
    """
    by_spelling = {s: f for f, spellings in SYNONYMS.items() for s in spellings}
    taken: set[str] = set()
    mapping = []
    for header in headers:
        found = by_spelling.get(_squash(header))
        if found and found not in taken:
            taken.add(found)
            mapping.append(found)
        elif not header.strip():
            mapping.append(IGNORE)
        else:
            mapping.append(TRAIT + trait_key(header))
    return mapping


def column_targets(header: str) -> list[str]:
    """What a column may be mapped to, for the page's choices."""
    return [*FIELDS, *([TRAIT + trait_key(header)] if header.strip() else []), IGNORE]


def override(headers: Sequence[str], mapping: list[str], choices: dict[str, str]) -> list[str]:
    """Apply `column=target` choices (column by header, case and spaces ignored)."""
    mapping = list(mapping)
    squashed = [_squash(h) for h in headers]
    for column, target in choices.items():
        if _squash(column) not in squashed:
            raise ImportFileError(
                f"the file has no column {column!r}; its columns are: {', '.join(headers)}"
            )
        mapping[squashed.index(_squash(column))] = target.strip()
    return mapping


def check_mapping(mapping: Sequence[str]) -> list[str]:
    """What is wrong with a mapping, as messages (empty when it can be used)."""
    problems = []
    for target in mapping:
        if target not in FIELDS and target != IGNORE and not _valid_trait(target):
            problems.append(
                f"{target!r} is not a target: use one of {', '.join(FIELDS)}, "
                f"trait:NAME (a custom attribute) or {IGNORE}"
            )
    if "email" not in mapping:
        problems.append("no column is mapped to email: contacts are matched by their email")
    used = [t for t in mapping if t != IGNORE]
    for target in sorted({t for t in used if used.count(t) > 1}):
        problems.append(f"{target} is chosen for more than one column: keep one")
    return problems


def _valid_trait(target: str) -> bool:
    return target.startswith(TRAIT) and 0 < len(target) - len(TRAIT) <= 100


# --- rows -----------------------------------------------------------------------------------


@dataclass
class ContactRow:
    """A valid row: the email and the fields the file gives (empty cells left out)."""

    email: str
    fields: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)

    def merge(self, later: ContactRow) -> None:
        """Take a later row for the same email: its values win, tags add up."""
        self.fields.update(later.fields)
        self.traits.update(later.traits)
        self.tags |= later.tags


def parse_row(cells: Sequence[str], mapping: Sequence[str], owners: dict[str, int]) -> ContactRow:
    """Validate one row against the mapping; raise ValueError naming the bad value."""
    if len(cells) > len(mapping) and any(c.strip() for c in cells[len(mapping) :]):
        raise ValueError(f"{len(cells)} cells but the header names {len(mapping)} columns")
    values: dict[str, str] = {}
    traits: dict[str, str] = {}
    for target, cell in zip(mapping, cells, strict=False):
        cell = cell.strip()
        if not cell or target == IGNORE:
            continue
        if target.startswith(TRAIT):
            if len(cell) > TRAIT_LIMIT:
                raise ValueError(f"{target[len(TRAIT) :]} is longer than {TRAIT_LIMIT} characters")
            traits[target[len(TRAIT) :]] = cell
            continue
        if len(cell) > LIMITS.get(target, 10_000):
            raise ValueError(f"{target} is longer than {LIMITS[target]} characters")
        values[target] = cell
    if "email" not in values:
        raise ValueError("no email")
    email = normalise_email(values.pop("email"))
    if not EMAIL_RE.fullmatch(email):
        raise ValueError(f"{email!r} is not an email address")
    row = ContactRow(email, traits=traits)
    for name in ("first_name", "last_name", "company"):
        if name in values:
            row.fields[name] = values[name]
    if "stage" in values:
        stage = values["stage"].lower()
        if stage not in STAGES:
            raise ValueError(f"stage {values['stage']!r} is not one of {', '.join(STAGES)}")
        row.fields["stage"] = stage
    if "owner" in values:
        owner = normalise_email(values["owner"])
        if owner not in owners:
            raise ValueError(f"owner {values['owner']!r} is not the email of a user")
        row.fields["owner_id"] = owners[owner]
    if "tags" in values:
        row.tags = {t.strip() for t in values["tags"].split(";") if t.strip()}
        long = sorted(t for t in row.tags if len(t) > TAG_LIMIT)
        if long:
            raise ValueError(f"tag {long[0][:40]!r}… is longer than {TAG_LIMIT} characters")
    return row


# --- one batch, planned ---------------------------------------------------------------------

CONTACT_FIELDS = ("first_name", "last_name", "company", "stage", "owner_id")


@dataclass
class BatchPlan:
    """What one batch writes: new contacts, changed ones, stage changes, tags."""

    new: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    stage_changes: list[tuple[str, str | None, str]] = field(default_factory=list)
    tags: dict[str, set[str]] = field(default_factory=dict)


def plan_batch(
    rows: dict[str, ContactRow], existing: dict[str, dict[str, Any]], now: datetime
) -> BatchPlan:
    """Split rows into inserts and updates; a field the file leaves empty keeps its value."""
    plan = BatchPlan()
    for email, row in rows.items():
        known = existing.get(email)
        if row.tags:
            plan.tags[email] = row.tags
        if known is None:
            plan.new.append(
                {
                    "email": email,
                    **{f: row.fields.get(f) for f in CONTACT_FIELDS},
                    "stage": row.fields.get("stage", "lead"),
                    "traits": dict(row.traits),
                    "score": 0,
                    "engagement_score": 0,
                    "fit_score": 0,
                    "email_status": "ok",
                    "created_at": now,
                    "updated_at": now,
                }
            )
            if "stage" in row.fields:
                plan.stage_changes.append((email, None, row.fields["stage"]))
            continue
        merged = {f: row.fields.get(f, known[f]) for f in CONTACT_FIELDS}
        traits = {**(known["traits"] or {}), **row.traits}
        if merged == {f: known[f] for f in CONTACT_FIELDS} and traits == (known["traits"] or {}):
            plan.unchanged += 1
            continue
        plan.changed.append({"id": known["id"], **merged, "traits": traits, "updated_at": now})
        if merged["stage"] != known["stage"]:
            plan.stage_changes.append((email, known["stage"], merged["stage"]))
    return plan


# --- the I/O --------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    """What an import did (or, dry, would do)."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    repeated: int = 0
    skipped: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: int, message: str) -> None:
        """Count a bad row; keep its line and message while the list is short."""
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((line, message))

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "repeated": self.repeated,
            "skipped": self.skipped,
            "problems": [list(p) for p in self.problems],
        }


Progress = Callable[[int, int], None]


def owner_emails(conn: Connection) -> dict[str, int]:
    """Users by email: the owners a file may name."""
    from tracker.models import User

    return {email.lower(): id_ for email, id_ in conn.execute(select(User.email, User.id))}


def import_contacts(
    engine: Engine,
    source: CsvText,
    mapping: Sequence[str],
    cause: str,
    progress: Progress | None = None,
    dry_run: bool = False,
    batch: int = BATCH,
    summary: ImportSummary | None = None,
) -> tuple[ImportSummary, list[int]]:
    """Import every valid row, `batch` rows per transaction; return the summary and the
    action runs left queued (for the caller to enqueue after the commits).

    `cause` is logged on stage changes (`import: contacts.csv`). A dry run reads
    the database to tell new from existing contacts and writes nothing. Pass a
    `summary` to count into it (a progress callback can then read it).
    """
    problems = check_mapping(mapping)
    if problems:
        raise ImportFileError("; ".join(problems))
    total = count_records(source)
    summary = ImportSummary() if summary is None else summary
    queued: list[int] = []
    with engine.connect() as conn:
        owners = owner_emails(conn)
    seen: set[str] = set()
    pending: dict[str, ContactRow] = {}
    done = 0
    for line, cells in records(source):
        summary.rows += 1
        try:
            row = parse_row(cells, mapping, owners)
        except ValueError as e:
            summary.skip(line, str(e))
        else:
            if row.email in seen:
                summary.repeated += 1
            seen.add(row.email)
            if row.email in pending:
                pending[row.email].merge(row)
            else:
                pending[row.email] = row
        if summary.rows - done >= batch:
            queued += _run_batch(engine, pending, cause, summary, dry_run)
            pending, done = {}, summary.rows
            if progress:
                progress(done, total)
    queued += _run_batch(engine, pending, cause, summary, dry_run)
    if progress:
        progress(summary.rows, total)
    return summary, queued


def _run_batch(
    engine: Engine,
    rows: dict[str, ContactRow],
    cause: str,
    summary: ImportSummary,
    dry_run: bool,
) -> list[int]:
    from tracker.models import utcnow

    if not rows:
        return []
    if dry_run:
        with engine.connect() as conn:
            plan = plan_batch(rows, _existing(conn, list(rows)), utcnow())
        summary.created += len(plan.new)
        summary.updated += len(plan.changed)
        summary.unchanged += plan.unchanged
        return []
    with engine.begin() as conn:
        return _write_batch(conn, rows, cause, summary)


def _existing(conn: Connection, emails: list[str]) -> dict[str, dict[str, Any]]:
    from tracker.models import Contact

    c = Contact.__table__
    query = select(c.c.id, c.c.email, c.c.traits, *(c.c[f] for f in CONTACT_FIELDS)).where(
        c.c.email.in_(emails)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()  # ingestion may be scoring the same contacts
    names = ("id", "email", "traits", *CONTACT_FIELDS)
    # Plain tuples zipped with the names: RowMapping costs more than the query here.
    return {row[1]: dict(zip(names, row, strict=True)) for row in conn.execute(query)}


def _write_batch(
    conn: Connection, rows: dict[str, ContactRow], cause: str, summary: ImportSummary
) -> list[int]:
    from automation.bulk import insert_rows, update_rows
    from tracker.automation_models import ContactTag, StageChange
    from tracker.models import Contact, utcnow

    now = utcnow()
    contacts = Contact.__table__
    existing = _existing(conn, list(rows))
    plan = plan_batch(rows, existing, now)
    inserted = insert_rows(conn, contacts, plan.new, conflict=("email",), returning=("id", "email"))
    ids = {email: known["id"] for email, known in existing.items()}
    ids.update({email: id_ for id_, email in inserted})
    raced = [r["email"] for r in plan.new if r["email"] not in ids]
    if raced:
        # Created meanwhile (a form sent while we imported): update them like the others.
        late = _existing(conn, raced)
        ids.update({email: known["id"] for email, known in late.items()})
        again = plan_batch({e: rows[e] for e in raced}, late, now)
        plan.changed += again.changed
        plan.unchanged += again.unchanged
        plan.stage_changes += again.stage_changes
    update_rows(conn, contacts, plan.changed, key="id")
    insert_rows(  # one multi-row statement; the conflict target is only the primary key
        conn,
        StageChange.__table__,
        [
            {
                "contact_id": ids[email],
                "from_stage": before,
                "to_stage": after,
                "cause": cause[:300],
                "created_at": now,
            }
            for email, before, after in plan.stage_changes
        ],
        conflict=("id",),
    )
    insert_rows(
        conn,
        ContactTag.__table__,
        [
            {"contact_id": ids[email], "tag": tag, "created_at": now}
            for email, tags in sorted(plan.tags.items())
            for tag in sorted(tags)
        ],
        conflict=("contact_id", "tag"),
    )
    summary.created += len(inserted)
    summary.updated += len(plan.changed)
    summary.unchanged += plan.unchanged
    touched = {id_ for id_, _ in inserted} | {r["id"] for r in plan.changed}
    touched |= {ids[email] for email in plan.tags}
    return settle(conn, touched, now)


SETTLE_ROUNDS = 3
"""Rounds of segments-then-thresholds, as in ingestion: actions feed back into segments."""


def settle(conn: Connection, contact_ids: Iterable[int], now: datetime) -> list[int]:
    """Re-score the fit of these contacts, move their segments, run thresholds.

    Returns the action runs left queued for workers.
    """
    from automation.points import load_rulebook, run_thresholds, score_batch
    from automation.segments import load_segments, refresh
    from automation.sequence_runner import enrol_joined

    contact_ids = set(contact_ids)
    rulebook = load_rulebook(conn)
    segments = load_segments(conn)
    if not contact_ids or (rulebook.empty and not segments):
        return []
    scored = score_batch(conn, [], refit=contact_ids, rulebook=rulebook)
    touched, rescore = set(contact_ids), scored.changed
    for _ in range(SETTLE_ROUNDS):
        moved = refresh(conn, now, touched=touched, segments=segments) if segments else None
        if moved:
            enrol_joined(conn, moved.joined, now)
        regrouped = moved.contacts if moved else set()
        touched = run_thresholds(conn, rulebook, rescore | regrouped, now, scored)
        rescore = set()
        if not touched:
            break
    return scored.queued_runs
