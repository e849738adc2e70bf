"""The overview's figures: outcomes per hour from the database, and the chart laid out from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dispatcher.manage import insights
from dispatcher.manage.insights import HourOutcomes
from dispatcher.web.console_charts import PLOT_HEIGHT, axis_top, hourly_chart
from tests.conftest import add_webhook
from tests.console_support import Attempt, insert_delivery


@pytest.mark.parametrize(
    ("largest", "expected"),
    [
        (0, (1, 1)),
        (1, (1, 1)),
        (3, (3, 1)),
        (4, (4, 1)),
        (5, (6, 2)),
        (7, (8, 2)),
        (9, (10, 5)),
        (12, (15, 5)),
        (40, (40, 10)),
        (137, (150, 50)),
        (4000, (4000, 1000)),
        (4001, (6000, 2000)),
    ],
)
def test_the_y_axis_ends_on_a_round_number_in_at_most_four_steps(
    largest: int, expected: tuple[int, int]
) -> None:
    assert axis_top(largest) == expected


def day(counts: dict[int, tuple[int, int]]) -> list[HourOutcomes]:
    """24 hours ending at 10:00 UTC; `counts` maps an hour's index to (succeeded, failed)."""
    start = datetime(2026, 11, 29, 11, tzinfo=UTC)
    return [HourOutcomes(start + timedelta(hours=i), *counts.get(i, (0, 0))) for i in range(24)]


def test_bars_stack_failed_on_succeeded_on_a_shared_scale() -> None:
    chart = hourly_chart(day({3: (10, 2), 23: (3, 0)}))
    assert len(chart.bars) == 24
    busy, last = chart.bars[3], chart.bars[23]
    # 12 at most: the axis ends at 15, so 10 of 15 fill two thirds of the plot.
    assert busy.succeeded_height == pytest.approx(PLOT_HEIGHT * 10 / 15, abs=0.01)
    assert busy.failed_height == pytest.approx(PLOT_HEIGHT * 2 / 15, abs=0.01)
    assert busy.failed_y + busy.failed_height == pytest.approx(busy.succeeded_y)
    assert busy.succeeded_y + busy.succeeded_height == pytest.approx(chart.baseline)
    assert last.failed_height == 0
    assert [t.label for t in chart.ticks] == ["0", "5", "10", "15"]
    assert busy.label == "14:00 UTC: 10 succeeded, 2 failed"
    assert [h.label for h in chart.hours][-1] == "10:00"
    assert len(chart.hours) == 8
    assert (chart.succeeded, chart.failed) == (13, 2)
    assert chart.summary == (
        "13 succeeded and 2 failed in the last 24 hours; the busiest hour was 14:00 UTC"
        " with 12 deliveries."
    )


def test_an_empty_day_says_so() -> None:
    chart = hourly_chart(day({}))
    assert chart.empty and chart.summary == "No deliveries finished in the last 24 hours."
    assert all(b.succeeded_height == b.failed_height == 0 for b in chart.bars)


async def finish_at_hour(db: asyncpg.Pool, delivery_id: int, hours_back: int) -> None:
    """Move a delivery's finish to 5 minutes into the UTC hour `hours_back` before this one."""
    await db.execute(
        "UPDATE dispatcher.deliveries SET finished_at = date_trunc('hour', now(), 'UTC')"
        " - make_interval(hours => $2) + interval '5 minutes' WHERE id = $1",
        delivery_id,
        hours_back,
    )


async def test_hourly_outcomes_count_finished_deliveries_per_utc_hour(db: asyncpg.Pool) -> None:
    one, _ = await add_webhook(db, "https://one.example/h", ["a.b"])
    two, _ = await add_webhook(db, "https://two.example/h", ["a.b"])
    placed = [
        (one, "succeeded", 0),
        (one, "succeeded", 0),
        (one, "failed", 0),
        (one, "succeeded", 5),
        (two, "failed", 5),
        (one, "succeeded", 23),
        (one, "succeeded", 24),  # before the window
        (one, "cancelled", 5),  # neither outcome
    ]
    for webhook_id, status, hours_back in placed:
        delivery = await insert_delivery(
            db, webhook_id, "a.b", status, timedelta(days=3), [Attempt(200)]
        )
        await finish_at_hour(db, delivery, hours_back)
    await insert_delivery(db, one, "a.b", "pending", timedelta(minutes=1))

    async with db.acquire() as conn:
        overall = await insights.hourly_outcomes(conn, None)
        only_one = await insights.hourly_outcomes(conn, one)
    assert len(overall) == 24
    assert [h.hour for h in overall] == sorted(h.hour for h in overall)
    # The database's clock, not this process's: they may sit either side of an hour's turn.
    assert overall[-1].hour == await db.fetchval("SELECT date_trunc('hour', now(), 'UTC')")
    counts = {
        23 - i: (h.succeeded, h.failed) for i, h in enumerate(overall) if h.succeeded + h.failed
    }
    assert counts == {0: (2, 1), 5: (1, 1), 23: (1, 0)}
    counts = {
        23 - i: (h.succeeded, h.failed) for i, h in enumerate(only_one) if h.succeeded + h.failed
    }
    assert counts == {0: (2, 1), 5: (1, 0), 23: (1, 0)}


async def test_queue_depth_and_pending_counts(db: asyncpg.Pool) -> None:
    webhook_id, _ = await add_webhook(db, "https://one.example/h", ["a.b"])
    await insert_delivery(db, webhook_id, "a.b", "pending", timedelta(minutes=10))
    later = await insert_delivery(db, webhook_id, "a.b", "pending", timedelta(0))
    await db.execute(
        "UPDATE dispatcher.deliveries SET run_at = now() + interval '1 hour' WHERE id = $1", later
    )
    await insert_delivery(db, webhook_id, "a.b", "succeeded", timedelta(minutes=10))
    async with db.acquire() as conn:
        queue = await insights.queue_depth(conn)
        pending = await insights.pending_of_webhook(conn, webhook_id)
    assert (queue.due_now, queue.scheduled, queue.leased, queue.pending) == (1, 1, 0, 2)
    # Due since a minute after it was created, ten minutes ago.
    assert queue.oldest_due_s == pytest.approx(540, abs=30)
    assert pending == 2


async def test_the_kept_history_agrees_with_a_full_count_and_reads_the_past_once(
    db: asyncpg.Pool,
) -> None:
    one, _ = await add_webhook(db, "https://one.example/h", ["a.b"])
    two, _ = await add_webhook(db, "https://two.example/h", ["a.b"])
    for webhook_id, status, hours_back in [
        (one, "succeeded", 0),
        (one, "failed", 3),
        (two, "succeeded", 3),
        (two, "failed", 23),
        (one, "succeeded", 30),  # before the window
    ]:
        delivery = await insert_delivery(
            db, webhook_id, "a.b", status, timedelta(days=2), [Attempt(200)]
        )
        # Whole hours back from now: in that many hours before this one, and never in the
        # future (finish_at_hour's "5 minutes into the hour" is, early in an hour).
        await db.execute(
            "UPDATE dispatcher.deliveries SET finished_at = now() - make_interval(hours => $2)"
            " WHERE id = $1",
            delivery,
            hours_back,
        )
    history = insights.OutcomeHistory()

    async def both(webhook_id: int | None) -> tuple[list[HourOutcomes], list[HourOutcomes]]:
        async with db.acquire() as conn:
            return (
                await history.hourly(conn, webhook_id),
                await insights.hourly_outcomes(conn, webhook_id),
            )

    for webhook_id in (None, one, two):
        kept, counted = await both(webhook_id)
        assert kept == counted
    async with db.acquire() as conn:
        assert await history.per_webhook(conn) == {one: (1, 1), two: (1, 1)}

    # Deliveries finishing now are counted on the next call.
    for status in ("succeeded", "failed", "succeeded"):
        # insert_delivery finishes a delivery a minute after `age`: so now.
        await insert_delivery(db, two, "a.b", status, timedelta(minutes=1), [Attempt(200)])
    kept, counted = await both(None)
    assert kept == counted and kept[-1].succeeded + kept[-1].failed == 4

    # The settled past is not read again: a row removed from it (as retention would) is still
    # counted by the history, while a full count no longer sees it.
    await db.execute(
        "DELETE FROM dispatcher.deliveries WHERE webhook_id = $1 AND status = 'failed'", two
    )
    kept, counted = await both(two)
    assert sum(h.failed for h in kept) == sum(h.failed for h in counted) + 1


async def test_a_delivery_finishing_past_the_clock_read_is_left_for_the_next_view(
    db: asyncpg.Pool,
) -> None:
    """At an hour's turn a delivery may finish in an hour after the last one shown."""
    webhook_id, _ = await add_webhook(db, "https://one.example/h", ["a.b"])
    delivery = await insert_delivery(db, webhook_id, "a.b", "succeeded", timedelta(minutes=1))
    await db.execute(
        "UPDATE dispatcher.deliveries"
        " SET finished_at = date_trunc('hour', now(), 'UTC') + interval '61 minutes'"
        " WHERE id = $1",
        delivery,
    )
    async with db.acquire() as conn:
        series = await insights.OutcomeHistory().hourly(conn, None)
    assert len(series) == 24 and sum(h.succeeded + h.failed for h in series) == 0
