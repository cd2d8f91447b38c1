"""Every tunable of Closed Loop: name, default and a one-line explanation.

Settings are read from the environment (same name) by `tracker.config.load`;
the README's configuration table is generated from this registry and a test
fails when the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One tunable: its environment name, default and what it does."""

    name: str
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", None, "SQLAlchemy URL; default a SQLite file in the instance folder."),
    Setting(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis for the event stream and RQ; `closedloop dev` starts one when none answers.",
    ),
    Setting(
        "SECRET_KEY",
        None,
        "Signing key; required in production, generated into the instance folder in dev.",
    ),
    Setting("BASE_URL", "http://127.0.0.1:5000", "Public URL of this server, used in links."),
    Setting(
        "TRUSTED_PROXIES",
        "",
        "Comma-separated proxy IPs/CIDRs whose X-Forwarded-For is believed.",
    ),
    Setting("ENV", "development", "`production` makes SECRET_KEY mandatory."),
    Setting("EVENT_STREAM", "cl:events", "Redis stream that collection appends to."),
    Setting("INGEST_GROUP", "ingest", "Consumer group that ingestion workers read through."),
    Setting("INGEST_BATCH", 1000, "Most stream entries one ingestion batch takes."),
    Setting("INGEST_BLOCK_MS", 500, "How long an idle ingestion read waits for new entries."),
    Setting(
        "INGEST_CLAIM_IDLE_MS",
        30000,
        "Entries pending this long on another consumer are taken over (dead worker).",
    ),
    Setting("INGEST_JOB_SECONDS", 60, "How long one ingestion job keeps reading before it ends."),
    Setting("INGEST_CONCURRENCY", 1, "Ingestion jobs the scheduler keeps running at once."),
    Setting(
        "VISITOR_LAST_SEEN_SECONDS",
        60,
        "A known visitor's last_seen is rewritten once it moves by more than this.",
    ),
    Setting("SCHEDULER_TICK_SECONDS", 1.0, "How often the scheduler checks what to enqueue."),
    Setting("SITE_CACHE_SECONDS", 10, "How long collection trusts its in-memory copy of sites."),
    Setting(
        "SMTP_URL",
        "",
        "smtp://user:pass@host:587?starttls=1 or smtps://…; empty: mail is kept in the outbox.",
    ),
    Setting(
        "MAIL_FROM",
        "Closed Loop <closedloop@localhost>",
        "Sender of notifications, and of templates that name no sender of their own.",
    ),
    Setting(
        "MAIL_RATE_PER_SECOND",
        50,
        "Most messages sent per second through the SMTP server, all workers together; 0: no cap.",
    ),
    Setting(
        "MAIL_RATE_PER_HOUR",
        0,
        "Most messages sent per hour through the SMTP server, all workers together; 0: no cap.",
    ),
    Setting("MAIL_BATCH", 50, "Most messages one send job takes (a job costs more than a send)."),
    Setting("MAIL_MAX_ATTEMPTS", 5, "Tries of a message that meets temporary SMTP errors."),
    Setting(
        "UNSUBSCRIBE_MAILTO",
        "",
        "Address of the List-Unsubscribe mailto; empty: the address of MAIL_FROM.",
    ),
    Setting(
        "EMAIL_CAP_PER_DAY",
        2,
        "Most sequence emails one contact gets in any 24 hours; later steps are postponed.",
    ),
    Setting(
        "EMAIL_CAP_PER_WEEK",
        5,
        "Most sequence emails one contact gets in any 7 days; later steps are postponed.",
    ),
    Setting(
        "BOUNCE_SECRET",
        "",
        "Bearer token `POST /hooks/bounce` requires; empty: the endpoint is off (404).",
    ),
    Setting("ACTION_MAX_ATTEMPTS", 6, "Tries of a failing action (webhook, mail) before it fails."),
    Setting("MAX_BODY_BYTES", 32768, "Largest request body `POST /e` accepts."),
    Setting("MAX_BATCH_EVENTS", 50, "Most events one `POST /e` request may carry."),
    Setting(
        "FOLLOW_UP_HOURS",
        24,
        "Hours sales has to act on a new MQL for follow-up health to count it as on time.",
    ),
    Setting(
        "RETENTION_MONTHS",
        0,
        "Raw events older than this many months are deleted daily; 0 keeps them forever.",
    ),
)

DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}
