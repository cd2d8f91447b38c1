"""Attribution: which campaigns get the credit for a conversion, by model.

Pure functions over plain data: no database, no app. A touch is one moment a
contact met a campaign (a visit or event carrying a UTM campaign code, or a
human click on an email whose template or sequence belongs to a campaign); a
conversion (a new lead, an MQL, an opportunity, revenue) gives out one unit of
credit, or its value, over the touches at or before it.

Credits are exact `Fraction`s so that three linear touches give 1/3 each and
the report's sums are exact; the report turns them into numbers at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from fractions import Fraction

MODELS = ("first", "last", "linear")
"""Attribution models: first touch, last touch, linear multi-touch."""


@dataclass(frozen=True)
class CampaignKeys:
    """What makes a touch belong to a campaign: UTM codes (any case), templates, sequences."""

    id: int
    utm_campaigns: frozenset[str] = field(default_factory=frozenset)
    template_ids: frozenset[int] = field(default_factory=frozenset)
    sequence_ids: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        id: int,
        utm_campaigns: Iterable[str] = (),
        template_ids: Iterable[int] = (),
        sequence_ids: Iterable[int] = (),
    ) -> CampaignKeys:
        """Keys with the codes normalised (lower case, trimmed, empties dropped)."""
        return cls(
            id=id,
            utm_campaigns=frozenset(c.strip().lower() for c in utm_campaigns if c and c.strip()),
            template_ids=frozenset(template_ids),
            sequence_ids=frozenset(sequence_ids),
        )


@dataclass(frozen=True)
class Touch:
    """A moment a contact met something that may belong to a campaign."""

    at: datetime
    utm_campaign: str | None = None
    template_id: int | None = None
    sequence_id: int | None = None


@dataclass(frozen=True)
class CampaignIndex:
    """Lookup tables from codes, templates and sequences to campaign ids."""

    by_code: Mapping[str, int]
    by_template: Mapping[int, int]
    by_sequence: Mapping[int, int]

    @classmethod
    def build(cls, campaigns: Iterable[CampaignKeys]) -> CampaignIndex:
        """Index campaigns; when two claim the same key, the older (lower id) keeps it."""
        by_code: dict[str, int] = {}
        by_template: dict[int, int] = {}
        by_sequence: dict[int, int] = {}
        for campaign in sorted(campaigns, key=lambda c: c.id):
            for code in campaign.utm_campaigns:
                by_code.setdefault(code, campaign.id)
            for template_id in campaign.template_ids:
                by_template.setdefault(template_id, campaign.id)
            for sequence_id in campaign.sequence_ids:
                by_sequence.setdefault(sequence_id, campaign.id)
        return cls(by_code, by_template, by_sequence)

    def campaign_of(self, touch: Touch) -> int | None:
        """The campaign a touch belongs to, or None; a sequence wins over its template."""
        if touch.utm_campaign:
            found = self.by_code.get(touch.utm_campaign.strip().lower())
            if found is not None:
                return found
        if touch.sequence_id is not None and touch.sequence_id in self.by_sequence:
            return self.by_sequence[touch.sequence_id]
        if touch.template_id is not None:
            return self.by_template.get(touch.template_id)
        return None


def campaign_touches(touches: Iterable[Touch], index: CampaignIndex) -> list[tuple[datetime, int]]:
    """(time, campaign id) of the touches that belong to a campaign, oldest first.

    The same campaign met twice at the same instant (a visitor's first touch and
    the page view it came from) is one touch, so linear credit is not doubled.
    """
    found = {(t.at, cid) for t in touches if (cid := index.campaign_of(t)) is not None}
    return sorted(found)


def credit(
    touches: Iterable[tuple[datetime, int]], at: datetime, model: str
) -> dict[int, Fraction]:
    """Credit per campaign for one conversion at `at`, from the touches at or before it.

    first: the earliest touch gets 1; last: the latest gets 1; linear: each of
    the n touches gets 1/n (a campaign touched twice gets 2/n). No touches: {}.
    """
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r}: use one of {', '.join(MODELS)}")
    before = sorted(t for t in touches if t[0] <= at)
    if not before:
        return {}
    if model == "first":
        return {before[0][1]: Fraction(1)}
    if model == "last":
        return {before[-1][1]: Fraction(1)}
    shares: dict[int, Fraction] = defaultdict(Fraction)
    for _, campaign_id in before:
        shares[campaign_id] += Fraction(1, len(before))
    return dict(shares)


def campaign_for_touches(
    touches: Iterable[Touch], campaigns: Iterable[CampaignKeys] | CampaignIndex, at: datetime
) -> int | None:
    """The campaign of the last touch at or before `at` that belongs to one, or None.

    What an opportunity is attributed to when nobody chose its campaign.
    """
    index = campaigns if isinstance(campaigns, CampaignIndex) else CampaignIndex.build(campaigns)
    shares = credit(campaign_touches(touches, index), at, "last")
    return next(iter(shares), None)


@dataclass(frozen=True)
class Conversion:
    """Something a contact did that earns credit: `value` is 1 for counts, an amount for revenue.

    `campaign_id` set means someone chose the campaign by hand: it gets all the
    credit whatever the model.
    """

    contact_id: int
    at: datetime
    metric: str
    value: Fraction = Fraction(1)
    campaign_id: int | None = None
    counted_on: date | None = None
    """The day the conversion counts on when not `at`'s: a deal's revenue counts when it
    is won, credited over the touches up to its opening (`at`)."""


def attribute(
    conversions: Iterable[Conversion],
    touches_by_contact: Mapping[int, list[tuple[datetime, int]]],
    model: str,
) -> dict[tuple[int | None, str], Fraction]:
    """Sum credit times value per (campaign id, metric); what no campaign earned is under None."""
    totals: dict[tuple[int | None, str], Fraction] = defaultdict(Fraction)
    for conversion in conversions:
        if conversion.campaign_id is not None:
            shares: Mapping[int, Fraction] = {conversion.campaign_id: Fraction(1)}
        else:
            shares = credit(touches_by_contact.get(conversion.contact_id, ()), conversion.at, model)
        if not shares:
            totals[(None, conversion.metric)] += conversion.value
        for campaign_id, share in shares.items():
            totals[(campaign_id, conversion.metric)] += share * conversion.value
    return dict(totals)


CreditKey = tuple[int, date, str, str, int | None]
"""(contact id, UTC day of the conversion, model, metric, campaign id or None)."""


def contact_credits(
    conversions: Iterable[Conversion],
    touches_by_contact: Mapping[int, list[tuple[datetime, int]]],
    models: Iterable[str] = MODELS,
) -> dict[CreditKey, Fraction]:
    """Every model's credit times value per contact, conversion day, metric and campaign.

    What a store keeps so that a report only sums: `attribute` for one model and
    period is the sum of these over the period's days.
    """
    found: dict[CreditKey, Fraction] = defaultdict(Fraction)
    conversions = list(conversions)
    for model in models:
        for conversion in conversions:
            if conversion.campaign_id is not None:
                shares: Mapping[int, Fraction] = {conversion.campaign_id: Fraction(1)}
            else:
                shares = credit(
                    touches_by_contact.get(conversion.contact_id, ()), conversion.at, model
                )
            day = conversion.counted_on or conversion.at.astimezone(UTC).date()
            if not shares:
                found[(conversion.contact_id, day, model, conversion.metric, None)] += (
                    conversion.value
                )
            for campaign_id, share in shares.items():
                key = (conversion.contact_id, day, model, conversion.metric, campaign_id)
                found[key] += share * conversion.value
    return dict(found)
