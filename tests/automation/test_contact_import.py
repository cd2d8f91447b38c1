"""Contact import: column mapping, row checks, dedupe by email, batches, fit and segments."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from automation.config_file import parse
from automation.config_store import apply
from automation.contact_import import (
    ImportFileError,
    check_mapping,
    decode,
    detect_mapping,
    import_contacts,
    override,
    parse_row,
    records,
)
from tests.conftest import make_user
from tracker.automation_models import ContactTag, SegmentMember, StageChange
from tracker.db import db
from tracker.models import Contact


def run(app, text: str, **options):
    source = decode(text.encode())
    mapping = options.pop("mapping", None) or detect_mapping(source.headers)
    with app.app_context():
        return import_contacts(db.engine, source, mapping, "import: test.csv", **options)[0]


def contacts(app) -> dict[str, Contact]:
    with app.app_context():
        found = {c.email: c for c in db.session.scalars(select(Contact))}
        db.session.expunge_all()
        return found


# --- pure -------------------------------------------------------------------------------------


def test_headers_are_mapped_by_name_and_synonym_whatever_the_case_and_spaces():
    headers = [
        "E-mail",
        " First Name ",
        "SURNAME",
        "Company name",
        "Lifecycle Stage",
        "Owner",
        "Tags",
        "Job Title",
        "",
        "email address",
    ]
    assert detect_mapping(headers) == [
        "email", "first_name", "last_name", "company", "stage", "owner", "tags",
        "trait:job_title", "ignore",
        "trait:email_address",  # a second email column is only an attribute
    ]  # fmt: skip


def test_overrides_pick_columns_by_header_and_mistakes_are_named():
    headers = ("Mail", "Org", "Notes")
    mapping = override(headers, detect_mapping(headers), {"org": "company", "NOTES": "ignore"})
    assert mapping == ["email", "company", "ignore"]
    with pytest.raises(ImportFileError, match=r"no column 'Phone'.*Mail, Org, Notes"):
        override(headers, mapping, {"Phone": "trait:phone"})
    assert check_mapping(["company", "company", "bogus"]) == [
        "'bogus' is not a target: use one of email, first_name, last_name, company, stage, "
        "owner, tags, trait:NAME (a custom attribute) or ignore",
        "no column is mapped to email: contacts are matched by their email",
        "company is chosen for more than one column: keep one",
    ]


def test_files_decode_as_utf8_with_or_without_bom_with_commas_or_semicolons():
    plain = decode("email,name\na@x.io,Zoë\n".encode())
    bom = decode("\ufeffemail;name\r\na@x.io;Zoë\r\n".encode())
    assert plain.headers == bom.headers == ("email", "name")
    assert list(records(plain)) == list(records(bom)) == [(2, ["a@x.io", "Zoë"])]
    with pytest.raises(
        ImportFileError, match="line 2 is not UTF-8 text: save the file as 'CSV UTF-8'"
    ):
        decode("email\nzoë@x.io\n".encode("latin-1"))
    with pytest.raises(ImportFileError, match="empty"):
        decode(b"")


def test_line_numbers_count_physical_lines_across_quoted_newlines_and_blank_rows():
    source = decode(b'email,notes\na@x.io,"two\nlines"\n\nb@x.io,x\n')
    assert [line for line, _ in records(source)] == [2, 5]


def test_a_row_is_refused_with_what_is_wrong():
    mapping = ["email", "stage", "owner", "tags", "company"]
    owners = {"sam@acme.test": 7}
    row = parse_row([" Ann@X.io ", "MQL", "SAM@acme.test", "vip; ; beta", ""], mapping, owners)
    assert (row.email, row.fields, row.tags) == ("ann@x.io", {"stage": "mql", "owner_id": 7},
                                                 {"vip", "beta"})  # fmt: skip
    for cells, message in [
        (["not-an-email"], "'not-an-email' is not an email address"),
        (["", "lead"], "no email"),
        (["a@x.io", "hot"], "stage 'hot' is not one of subscriber, lead"),
        (["a@x.io", "", "bob@acme.test"], "owner 'bob@acme.test' is not the email of a user"),
        (["a@x.io", "", "", "", "x" * 201], "company is longer than 200 characters"),
        (["a@x.io", "", "", "", "", "extra"], "6 cells but the header names 5 columns"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_row(cells, mapping, owners)


# --- against the database ---------------------------------------------------------------------


def test_new_and_existing_contacts_are_upserted_and_empty_cells_erase_nothing(app):
    with app.app_context():
        db.session.add(
            Contact(email="old@x.io", first_name="Olga", company="Old Co", traits={"size": "9"})
        )
        db.session.commit()
    summary = run(
        app,
        "Email,First name,Company,Industry\nOLD@x.io,,New Co,Retail\nnew@x.io,Nina,,\n",
    )
    assert (summary.rows, summary.created, summary.updated, summary.skipped) == (2, 1, 1, 0)
    found = contacts(app)
    assert (found["old@x.io"].first_name, found["old@x.io"].company) == ("Olga", "New Co")
    assert found["old@x.io"].traits == {"size": "9", "industry": "Retail"}
    assert (found["new@x.io"].first_name, found["new@x.io"].stage) == ("Nina", "lead")
    assert found["new@x.io"].traits == {}


def test_one_contact_per_email_within_the_file_later_values_win_even_across_batches(app):
    rows = ["email,first_name,company,tags"]
    rows += ["dup@x.io,Ann,First,a", "other@x.io,O,,", " DUP@x.io ,,Second,b", "dup@x.io,Anna,,"]
    summary = run(app, "\n".join(rows) + "\n", batch=2)
    assert summary.repeated == 2
    found = contacts(app)
    assert sorted(found) == ["dup@x.io", "other@x.io"]
    assert (found["dup@x.io"].first_name, found["dup@x.io"].company) == ("Anna", "Second")
    with app.app_context():
        tags = db.session.scalars(
            select(ContactTag.tag).where(ContactTag.contact_id == found["dup@x.io"].id)
        ).all()
    assert sorted(tags) == ["a", "b"]


def test_bad_rows_are_reported_by_line_and_the_rest_is_imported(app):
    text = "email,stage\ngood@x.io,mql\nbroken,lead\n\nalso@x.io,won\nfine@x.io,\n"
    summary = run(app, text)
    assert summary.problems == [
        (3, "'broken' is not an email address"),
        (5, "stage 'won' is not one of subscriber, lead, mql, sql, opportunity, customer, "
            "nurture, disqualified"),
    ]  # fmt: skip
    assert (summary.rows, summary.created, summary.skipped) == (4, 2, 2)
    assert sorted(contacts(app)) == ["fine@x.io", "good@x.io"]


def test_stages_owner_and_tags_are_set_and_stage_changes_logged_with_the_file(app):
    owner = make_user(app, "sales", "sam@acme.test")
    with app.app_context():
        db.session.add(Contact(email="moved@x.io", stage="lead"))
        db.session.commit()
    run(app, "email,stage,owner,tags\nmoved@x.io,SQL,sam@acme.test,vip;beta\nnew@x.io,mql,,\n")
    found = contacts(app)
    assert (found["moved@x.io"].stage, found["moved@x.io"].owner_id) == ("sql", owner)
    with app.app_context():
        changes = db.session.execute(
            select(Contact.email, StageChange.from_stage, StageChange.to_stage, StageChange.cause)
            .join(Contact, Contact.id == StageChange.contact_id)
            .order_by(Contact.email)
        ).all()
    assert [tuple(c) for c in changes] == [
        ("moved@x.io", "lead", "sql", "import: test.csv"),
        ("new@x.io", None, "mql", "import: test.csv"),
    ]


def test_importing_the_same_file_again_changes_nothing(app):
    make_user(app, "sales", "sam@acme.test")
    text = (
        "email,first_name,stage,owner,tags,plan\n"
        "a@x.io,A,mql,sam@acme.test,t1;t2,pro\n"
        "b@x.io,B,,,,\n"
    )
    first = run(app, text)
    before = {e: (c.updated_at, c.stage, c.traits) for e, c in contacts(app).items()}
    second = run(app, text)
    assert (first.created, first.updated) == (2, 0)
    assert (second.created, second.updated, second.unchanged) == (0, 0, 2)
    assert {e: (c.updated_at, c.stage, c.traits) for e, c in contacts(app).items()} == before
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(StageChange)) == 1
        assert db.session.scalar(select(func.count()).select_from(ContactTag)) == 2


def test_a_dry_run_counts_and_writes_nothing(app):
    with app.app_context():
        db.session.add(Contact(email="old@x.io"))
        db.session.commit()
    summary = run(app, "email,company\nold@x.io,Acme\nnew@x.io,\nbad,\n", dry_run=True)
    assert (summary.created, summary.updated, summary.skipped) == (1, 1, 1)
    assert sorted(contacts(app)) == ["old@x.io"]
    assert contacts(app)["old@x.io"].company is None


RULES = """
rules:
  - name: Retail fit
    kind: fit
    when: {field: industry, equals: retail}
    points: 20
segments:
  - name: Retailers
    match:
      score: {kind: fit, gte: 20}
"""


def test_imported_contacts_get_their_fit_score_and_segments(app):
    with app.app_context(), db.engine.begin() as conn:
        apply(conn, parse(RULES, "rules.yaml"), "rules.yaml")
    run(app, "email,industry\nshop@x.io,retail\nbank@x.io,finance\n")
    found = contacts(app)
    assert (found["shop@x.io"].fit_score, found["shop@x.io"].score) == (20, 20)
    assert found["bank@x.io"].fit_score == 0
    with app.app_context():
        members = db.session.scalars(select(SegmentMember.contact_id)).all()
    assert members == [found["shop@x.io"].id]
    # A later file that changes the attribute moves the score and the membership back.
    run(app, "email,industry\nshop@x.io,finance\n")
    assert contacts(app)["shop@x.io"].fit_score == 0
    with app.app_context():
        assert db.session.scalars(select(SegmentMember.contact_id)).all() == []
