"""A report period reaching past the retention is refused (400 naming ``query.from``), never
answered with zeros for the days already purged; the first day kept is a local day of the report's
zone that starts at or after the retention's UTC boundary."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.exceptions import ValidationException
from psycopg import AsyncConnection

from app.config import Settings
from app.core.services import open_services
from app.domains.pageviews.services import retention_first_day
from app.domains.reports.services import ReportService, resolve_range
from app.modules import MODULES
from tests.factories import Client, assert_problem, create_user, make_site, make_user


def first_kept(settings: Settings) -> date:
    return retention_first_day(datetime.now(UTC).date(), settings.analytics_retention_days)


@pytest.mark.parametrize(
    ("tz", "ahead_of_utc"),
    [("UTC", False), ("America/New_York", False), ("Asia/Tokyo", True), ("Pacific/Kiritimati", True)],
)
async def test_a_period_from_before_the_first_day_kept_is_a_400_naming_it(
    client: Client, app: Litestar, db: AsyncConnection[Any], settings: Settings, tz: str, ahead_of_utc: bool
) -> None:
    owner = await make_user(db, app)
    site = await make_site(db, owner.id)
    today = datetime.now(UTC).date()
    # A local day of a zone ahead of UTC starts on the UTC day before: the boundary's day is partly gone.
    kept = first_kept(settings) + timedelta(days=1 if ahead_of_utc else 0)
    url = f"/api/sites/{site.id}/summary"
    for first in (today - timedelta(days=365), kept - timedelta(days=1)):
        params = {"period": "custom", "from": first.isoformat(), "to": today.isoformat(), "tz": tz}
        response = await client.get(url, params=params, headers=owner.headers)
        body = assert_problem(response, 400, fields={"query.from"})
        assert kept.isoformat() in str(body), body
    params = {"period": "custom", "from": kept.isoformat(), "to": kept.isoformat(), "tz": tz}
    response = await client.get(url, params=params, headers=owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["pageviews"] == 0


async def test_the_service_refuses_such_a_range_too(settings: Settings, reports: ReportService) -> None:
    today = datetime.now(UTC).date()
    rng = resolve_range("custom", today - timedelta(days=365), today, "UTC")
    with pytest.raises(ValidationException) as refused:
        await reports.timeseries(1, rng, "day")
    assert first_kept(settings).isoformat() in str(refused.value.detail)


async def test_the_route_documents_the_retention(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    operation = schema["paths"]["/api/sites/{site_id}/summary"]["get"]
    [first] = [p for p in operation["parameters"] if p["name"] == "from"]
    assert "ANALYTICS_RETENTION_DAYS" in first["description"]
    assert "ANALYTICS_RETENTION_DAYS" in operation["description"]
    assert "400" in operation["responses"]


async def test_a_7d_period_longer_than_the_retention_starts_at_the_first_day_kept(
    settings: Settings, db: AsyncConnection[Any]
) -> None:
    short = msgspec.structs.replace(settings, analytics_retention_days=2)
    site = await make_site(db, await create_user(db))
    today = datetime.now(UTC).date()
    async with open_services(short, MODULES) as services:
        summary = await services[ReportService].summary(site.id, resolve_range("7d", None, None, "UTC"))
    kept = first_kept(short)
    assert (summary.range.first_day, summary.range.last_day) == (kept, today)
    assert summary.range.start == datetime(kept.year, kept.month, kept.day, tzinfo=UTC)
