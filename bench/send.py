"""Benchmark sending: one RQ worker sending queued messages, against plain smtplib.

    .venv/bin/python bench/send.py [--messages 3000] [--database sqlite|postgresql] [--profile]

Starts a private Redis and a local SMTP sink (aiosmtpd in a child process that
accepts and discards), builds the schema in a throwaway database (a SQLite file,
or a PostgreSQL database on 127.0.0.1:5432), creates N contacts and N queued
messages of a realistic template (personalisation, 6 links, CSS, a preheader),
and times ONE in-process RQ worker (the `mail` queue, burst mode) sending them
through the real path: claim, render, track, rate limit (set high enough not to
bind), SMTP over a kept connection, mark sent. Then it times plain `smtplib`
sending the same number of pre-rendered messages over one connection to the
same sink. Everything it starts or creates is removed at the end. The last line
is machine-readable: `send_mps=… raw_mps=… ratio=…`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

TARGET_MPS = 300
TARGET_RATIO = 0.5

SINK = r"""
import asyncio, signal, sys
from aiosmtpd.controller import Controller

class Sink:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Sink.count += 1
        return "250 OK"

controller = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
def stop(*_):
    controller.stop()
    Path = __import__("pathlib").Path
    Path(sys.argv[2]).write_text(str(Sink.count))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.pause()
"""

HTML = """<!doctype html>
<html><head><style>
  body { font-family: Helvetica, Arial, sans-serif; background: #f4f4f7; margin: 0 }
  .wrap { max-width: 600px; margin: 0 auto; background: #ffffff; padding: 24px }
  h1 { font-size: 22px; color: #111111 }
  p { font-size: 15px; line-height: 1.5; color: #333333 }
  .btn { display: inline-block; background: #2255ee; color: #ffffff; padding: 12px 20px;
         border-radius: 4px; text-decoration: none }
  .muted { color: #888888; font-size: 12px }
  @media (max-width: 620px) { .wrap { padding: 12px } }
</style></head>
<body><div class="wrap">
  <h1>Hi {{ contact.first_name | default("there") }},</h1>
  <p>Teams like {{ contact.company | default("yours") }} close the loop between their website
  and their sales team. Here are three things to try this week{% if owner.name %}, picked by
  {{ owner.name }}{% endif %}.</p>
  <table role="presentation" width="100%">
    {% for item in [("Score your leads", "https://acme.test/guide/scoring"),
                    ("Build a segment", "https://acme.test/guide/segments"),
                    ("Nurture by email", "https://acme.test/guide/nurture")] %}
    <tr><td><p><a href="{{ item[1] }}?utm_source=email&amp;utm_campaign=week1">
      {{ item[0] }}</a></p></td></tr>
    {% endfor %}
  </table>
  <p><a class="btn" href="https://acme.test/pricing?plan={{ contact.plan | default('pro') }}">
    See pricing</a></p>
  <p>Your score is {{ contact.score }}. Questions?
  <a href="https://acme.test/contact">Talk to us</a>
  or read <a href="https://acme.test/blog/closing-the-loop">the blog</a>.</p>
  <p class="muted">Acme Inc., 1 Loop Street. <a href="{{ unsubscribe_url }}">Unsubscribe</a>.</p>
</div></body></html>"""

TEMPLATE = {
    "subject": "{{ contact.first_name | default('Hello') }}, three things to try this week",
    "preheader": "Scoring, segments and nurture in ten minutes",
    "html": HTML,
    "from": "Acme <news@acme.test>",
    "reply_to": "sales@acme.test",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages to send")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--batch", type=int, default=50, help="MAIL_BATCH: messages per job")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker")
    return parser.parse_args()


def wait_for_port(port: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the SMTP sink did not start on port {port}")


def prepare(app: Any, count: int) -> list[int]:
    """N contacts with traits and owners, the template saved, a broadcast's messages queued."""
    from sqlalchemy import insert

    from automation.outgoing import create_messages
    from automation.template_source import save_template
    from tracker.db import db
    from tracker.email_models import Broadcast
    from tracker.models import Contact, User, utcnow

    with app.app_context(), db.engine.begin() as conn:
        owner_id = conn.execute(
            insert(User).values(email="sam@acme.test", name="Sam Sales", role="sales")
        ).inserted_primary_key[0]
        now = utcnow()
        conn.execute(
            insert(Contact),
            [
                {
                    "email": f"person{n}@example.com",
                    "first_name": f"Person{n}" if n % 7 else None,
                    "last_name": "Example",
                    "company": f"Company {n % 97}" if n % 5 else None,
                    "traits": {"plan": "team"} if n % 3 == 0 else {},
                    "stage": "lead",
                    "score": n % 60,
                    "owner_id": owner_id if n % 2 else None,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(count)
            ],
        )
        template_id, _ = save_template(conn, "week1", TEMPLATE, now)
        broadcast_id = conn.execute(
            insert(Broadcast).values(name="bench", template_id=template_id, status="sending")
        ).inserted_primary_key[0]
        contact_ids = [row[0] for row in conn.execute(db.select(Contact.id).order_by(Contact.id))]
        ids: list[int] = []
        for start in range(0, len(contact_ids), 1000):
            ids += create_messages(
                conn,
                template_id,
                [
                    {"contact_id": c, "broadcast_id": broadcast_id}
                    for c in contact_ids[start : start + 1000]
                ],
                kind="broadcast",
            )
    return ids


def pre_rendered(app: Any, ids: list[int]) -> list[tuple[str, str, bytes]]:
    """The same messages rendered ahead of time (for the plain smtplib baseline)."""
    from sqlalchemy import select

    from automation.render import render_message
    from automation.sending import _load_version, _recipients, cached_version, settings_from
    from tracker.db import db
    from tracker.email_models import Message

    with app.app_context(), db.engine.connect() as conn:
        settings = settings_from(app.config)
        rows = conn.execute(
            select(
                Message.id, Message.contact_id, Message.template_version_id, Message.to_addr
            ).where(Message.id.in_(ids))
        ).all()
        recipients = _recipients(conn, [r.contact_id for r in rows])
        out = []
        for r in rows:
            version = cached_version(r.template_version_id, lambda v: _load_version(conn, v))
            rendered = render_message(
                version,
                "A",
                message_id=r.id,
                to_addr=r.to_addr,
                context=recipients[r.contact_id]["context"],
                settings=settings.render,
            )
            out.append((rendered.sender_address, r.to_addr, rendered.raw))
    return out


def count_sent(app: Any) -> int:
    from sqlalchemy import func, select

    from tracker.db import db
    from tracker.email_models import Message

    with app.app_context():
        try:
            return db.session.scalar(
                select(func.count()).select_from(Message).where(Message.status == "sent")
            )
        finally:
            db.session.remove()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)  # RQ's line per job would be noise
    figures: dict[str, float] = {}
    with common.Cleanup() as cleanup:
        tmp = cleanup.tempdir("cl-bench-send-")
        redis_url = common.start_redis(cleanup, tmp)
        from tracker.redis_conn import free_port, get_redis

        port = free_port()
        count_file = tmp / "sink-count"
        sink = cleanup.process(
            "SMTP sink",
            subprocess.Popen([sys.executable, "-c", SINK, str(port), str(count_file)]),
        )
        wait_for_port(port)
        if args.database == "postgresql":
            if not common.pg_answers():
                print("PostgreSQL does not answer at 127.0.0.1:5432 as postgres")
                return 1
            name = "cl_bench_send"
            database_url = common.pg_create(name)
            cleanup.add(f"PostgreSQL database {name}", lambda: common.pg_drop(name))
        else:
            database_url = f"sqlite:///{tmp / 'bench.db'}"
        app = common.make_app(
            database_url,
            redis_url,
            SMTP_URL=f"smtp://127.0.0.1:{port}",
            MAIL_RATE_PER_SECOND=1_000_000,  # the bucket runs, but never binds
            MAIL_BATCH=args.batch,
            BASE_URL="https://tracker.acme.test",
        )
        common.migrate(app)
        print(f"== {args.database}: {args.messages:,} messages, {args.batch} a job")
        ids = prepare(app, args.messages)
        baseline = pre_rendered(app, ids)
        average = sum(len(raw) for _, _, raw in baseline) / len(baseline)
        print(f"  queued {len(ids):,} messages, {average / 1024:.1f} KB each")

        from automation.outgoing import MAIL_QUEUE, dispatch
        from automation.worker import run_worker

        jobs = dispatch(get_redis(app), ids, args.batch)
        profiler = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        run_worker(app, [MAIL_QUEUE], burst=True)
        if profiler:
            profiler.disable()
        send_seconds = time.perf_counter() - started
        sent = count_sent(app)
        figures["send_mps"] = sent / send_seconds
        print(
            f"  one worker: {sent:,} sent in {send_seconds:.2f} s ({jobs} jobs) "
            f"= {figures['send_mps']:,.0f} messages/s"
        )

        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for sender, to, raw in baseline:
                smtp.sendmail(sender, [to], raw)
        raw_seconds = time.perf_counter() - started
        figures["raw_mps"] = len(baseline) / raw_seconds
        print(
            f"  plain smtplib, pre-rendered: {len(baseline):,} in {raw_seconds:.2f} s "
            f"= {figures['raw_mps']:,.0f} messages/s"
        )
        from automation.mailer import close_all

        close_all()
        common.stop_process(sink)
        received = int(count_file.read_text()) if count_file.exists() else -1
        ok = sent == len(ids) and received == 2 * len(ids)
        verdict = "ok" if ok else "MISMATCH"
        print(f"  sink received {received:,} (expected {2 * len(ids):,}): {verdict}")
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
            print("  --- cProfile of the worker (cumulative, top 30) ---")
            print("\n".join("  " + line for line in out.getvalue().splitlines()[:70]))
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
            print("  --- cProfile of the worker (own time, top 20) ---")
            print("\n".join("  " + line for line in out.getvalue().splitlines()[:50]))
    figures["ratio"] = figures["send_mps"] / figures["raw_mps"]
    verdict = [
        f"≥ {TARGET_MPS}/s {'met' if figures['send_mps'] >= TARGET_MPS else 'NOT met'}",
        f"ratio ≥ {TARGET_RATIO} {'met' if figures['ratio'] >= TARGET_RATIO else 'NOT met'}",
    ]
    print(f"\ntargets: {'; '.join(verdict)}")
    print(
        f"send_mps={figures['send_mps']:.0f} raw_mps={figures['raw_mps']:.0f} "
        f"ratio={figures['ratio']:.2f}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
