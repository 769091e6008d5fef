"""Deterministic synthetic instrumentation for a subscription app, generated inside DuckDB.

Every value is a hash of (event day, index, purpose), so any raw partition can be regenerated
identically, at any scale, with no Python loops. The mess is deliberate:

- events arrive up to 3 days late: an event of day E lands in the raw partition of day E+k;
- about 2% of events are delivered twice (same event_id, new delivery_id, own lateness);
- client clocks are local time with an offset, so events near midnight carry another date;
- the app renamed the purchase property ``plan`` to ``plan_id`` on 2025-03-01;
- about 3% of traffic is bots, about 10% anonymous; signups carry an email;
- purchases in USD, EUR, GBP and JPY, some refunded 1 to 10 days later.
"""

import datetime as dt
import os

import duckdb

import backfill_assets as bfa

START = dt.date(2025, 1, 1)
MAX_LATENESS_DAYS = 3
MAX_REFUND_DELAY_DAYS = 10
PROPERTY_RENAMED_ON = dt.date(2025, 3, 1)
DEFAULT_EVENTS_PER_DAY = 2000


def events_per_day() -> int:
    """Scale of the demo source: $BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY, default 2000."""
    value = os.environ.get("BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY", str(DEFAULT_EVENTS_PER_DAY))
    if not value.isdigit() or int(value) < 100:
        raise ValueError(f"BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY must be an integer >= 100, got {value!r}")
    return int(value)


_MACROS = """
CREATE OR REPLACE TEMP MACRO rnd(day, idx, purpose) AS (hash(day, idx, purpose) % 1000003) / 1000003.0;
CREATE OR REPLACE TEMP MACRO lateness(day, id) AS CASE
    WHEN rnd(day, id, 'late') < 0.90 THEN 0 WHEN rnd(day, id, 'late') < 0.96 THEN 1
    WHEN rnd(day, id, 'late') < 0.99 THEN 2 ELSE 3 END;
CREATE OR REPLACE TEMP MACRO ts_in_day(day, idx, purpose) AS
    day::TIMESTAMP + to_seconds(floor(rnd(day, idx, purpose) * 86400)::BIGINT);
"""

# Prices per plan and currency; JPY has no minor unit.
_PRICES = """(VALUES
    ('basic', 'USD', 9.99), ('basic', 'EUR', 9.49), ('basic', 'GBP', 7.99), ('basic', 'JPY', 1500),
    ('pro', 'USD', 19.99), ('pro', 'EUR', 18.99), ('pro', 'GBP', 16.99), ('pro', 'JPY', 3000),
    ('team', 'USD', 49.99), ('team', 'EUR', 46.99), ('team', 'GBP', 39.99), ('team', 'JPY', 7500)
) AS prices(plan, currency, price)"""

RAW_EVENTS_SQL = f"""
WITH
sizes AS (
    SELECT $events_per_day::BIGINT AS n, greatest(1, $events_per_day // 50)::BIGINT AS signups,
           greatest(1, $events_per_day // 100)::BIGINT AS renewals
),
calendar AS (  -- purchase days reach further back: their refunds may land in the window
    SELECT d::DATE AS day, date_diff('day', DATE '{START}', d::DATE) AS day_no,
           d >= $start::DATE - INTERVAL {MAX_LATENESS_DAYS} DAY AS in_scope
    FROM range($start::DATE - INTERVAL {MAX_LATENESS_DAYS + MAX_REFUND_DELAY_DAYS} DAY, $end::DATE, INTERVAL 1 DAY) r(d)
    WHERE d >= DATE '{START}'
),
users_by_day AS (  -- users known on a day: 20 days' worth of pre-2025 users plus every signup so far
    SELECT c.*, (20 + day_no + 1) * signups AS known FROM calendar c, sizes
),
browsing AS (
    SELECT u.day, 'e-' || strftime(u.day, '%Y%m%d') || '-' || i AS event_id,
           CASE WHEN rnd(u.day, i, 'type') < 0.55 THEN 'page_view'
                WHEN rnd(u.day, i, 'type') < 0.85 THEN 'app_open' ELSE 'feature_used' END AS event_type,
           ts_in_day(u.day, i, 'ts') AS utc_ts,
           CASE WHEN rnd(u.day, i, 'who') >= 0.13 THEN 'u' || (CASE
                -- a user stops coming back after a churn age (exponential, mean 21 days);
                -- their traffic goes to one of the long-standing users instead
                WHEN pick >= 20 * signups AND u.day_no - (pick // signups - 20)
                     > floor(-ln(greatest(rnd(DATE '{START}', pick, 'churn'), 1e-9)) * 21)
                THEN pick % (20 * signups) ELSE pick END) END AS user_id,
           rnd(u.day, i, 'who') < 0.03 AS is_bot
    FROM (SELECT u.*, i, sizes.signups,
                 u.known - 1 - floor(u.known * rnd(u.day, i, 'user') ^ 2)::BIGINT AS pick
          FROM users_by_day u, sizes, range(sizes.n) t(i) WHERE u.in_scope) u
),
signup_stream AS (  -- new user j of the day: a signup, maybe a trial, maybe a first purchase
    SELECT u.day, u.in_scope, j, 'u' || ((20 + u.day_no) * s.signups + j) AS user_id,
           ts_in_day(u.day, j, 'signup') AS utc_ts,
           rnd(u.day, j, 'trial') < 0.5 AS trials, rnd(u.day, j, 'convert') < 0.3 AS converts,
           CASE WHEN rnd(u.day, j, 'plan') < 0.6 THEN 'basic' WHEN rnd(u.day, j, 'plan') < 0.9 THEN 'pro'
                ELSE 'team' END AS plan
    FROM users_by_day u, sizes s, range(s.signups) t(j)
),
purchases AS (  -- first purchases of converting trials, plus renewals by known users
    SELECT day, in_scope, 'c-' || strftime(day, '%Y%m%d') || '-' || j AS event_id,
           least(utc_ts + INTERVAL 10 MINUTE, day::TIMESTAMP + INTERVAL 86399 SECOND) AS utc_ts,
           user_id, plan, rnd(day, j, 'ccy') AS ccy_draw
    FROM signup_stream WHERE trials AND converts
    UNION ALL
    SELECT u.day, u.in_scope, 'p-' || strftime(u.day, '%Y%m%d') || '-' || j, ts_in_day(u.day, j, 'renewal'),
           'u' || floor(u.known * rnd(u.day, j, 'payer'))::BIGINT,
           CASE WHEN rnd(u.day, j, 'rplan') < 0.6 THEN 'basic' WHEN rnd(u.day, j, 'rplan') < 0.9 THEN 'pro'
                ELSE 'team' END,
           rnd(u.day, j, 'rccy')
    FROM users_by_day u, sizes s, range(s.renewals) t(j)
),
priced AS (
    SELECT p.*, prices.currency, prices.price::DECIMAL(18, 2) AS amount,
           p.day + (1 + hash(p.event_id, 'delay') % {MAX_REFUND_DELAY_DAYS})::INTEGER AS refund_day,
           rnd(p.day, hash(p.event_id), 'refund') < 0.08 AS refunded
    FROM purchases p JOIN {_PRICES} ON prices.plan = p.plan AND prices.currency =
        CASE WHEN p.ccy_draw < 0.5 THEN 'USD' WHEN p.ccy_draw < 0.75 THEN 'EUR'
             WHEN p.ccy_draw < 0.9 THEN 'GBP' ELSE 'JPY' END
),
all_events AS (
    SELECT day, event_id, event_type, utc_ts, user_id, is_bot,
           NULL AS plan, NULL AS currency, NULL::DECIMAL(18, 2) AS amount, NULL AS refund_of
    FROM browsing
    UNION ALL
    SELECT day, 's-' || strftime(day, '%Y%m%d') || '-' || j, 'signup', utc_ts, user_id, false,
           NULL, NULL, NULL, NULL
    FROM signup_stream WHERE in_scope
    UNION ALL
    SELECT day, 't-' || strftime(day, '%Y%m%d') || '-' || j, 'trial_start',
           least(utc_ts + INTERVAL 5 MINUTE, day::TIMESTAMP + INTERVAL 86399 SECOND), user_id, false,
           plan, NULL, NULL, NULL
    FROM signup_stream WHERE in_scope AND trials
    UNION ALL
    SELECT day, event_id, 'purchase', utc_ts, user_id, false, plan, currency, amount, NULL
    FROM priced WHERE in_scope
    UNION ALL
    SELECT refund_day, 'r-' || event_id, 'refund', ts_in_day(refund_day, hash(event_id), 'refund_ts'),
           user_id, false, plan, currency, amount, event_id
    FROM priced WHERE refunded AND refund_day >= $start::DATE - INTERVAL {MAX_LATENESS_DAYS} DAY
                  AND refund_day < $end::DATE
),
deliveries AS (  -- every event once, about 2% twice; each delivery arrives 0 to 3 days late
    SELECT e.*, n AS delivery_no,
           e.day + lateness(e.day, hash(e.event_id, n)) AS ingest_date
    FROM all_events e, range(1, 3) t(n)
    WHERE n = 1 OR rnd(e.day, hash(e.event_id), 'dup') < 0.02
)
SELECT
    event_id || '#' || delivery_no AS delivery_id,
    event_id,
    event_type,
    utc_ts + to_minutes(tz_offset_min) AS client_ts,
    tz_offset_min,
    user_id,
    CASE WHEN user_id IS NULL THEN 'a-' || (hash(event_id) % 100000) END AS anonymous_id,
    CASE WHEN event_type = 'signup' THEN 'user' || substr(user_id, 2) || '@example.com' END AS email,
    CASE WHEN is_bot THEN 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
         WHEN hash(event_id, 'os') % 2 = 0 THEN 'SubscriptionApp/4.2 (iOS 18.1)'
         ELSE 'SubscriptionApp/4.2 (Android 15)' END AS user_agent,
    CASE WHEN plan IS NULL THEN NULL
         WHEN day < DATE '{PROPERTY_RENAMED_ON}' THEN json_object('plan', plan)::VARCHAR
         ELSE json_object('plan_id', plan)::VARCHAR END AS properties,
    amount,
    currency,
    refund_of,
    ingest_date
FROM (
    SELECT *, [-480, -300, -180, 0, 60, 330, 540][(1 + hash(event_id, 'tz') % 7)::BIGINT]::INTEGER AS tz_offset_min
    FROM deliveries
)
WHERE ingest_date >= $start AND ingest_date < $end
"""


def raw_events(ctx: bfa.TransformContext) -> duckdb.DuckDBPyRelation:
    """The raw partitions of the window: every delivery whose ingest date falls in it."""
    ctx.con.execute(_MACROS)
    return ctx.sql(RAW_EVENTS_SQL)
