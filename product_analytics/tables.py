"""The derived tables of the product-analytics pipeline, declared with backfill_assets' public API."""

import os
from pathlib import Path

import dagster as dg
import pandera.pandas as pa

import backfill_assets as bfa

from . import source

DEMO_SALT = "demo-salt-NOT-SECRET"  # the demo default; set BACKFILL_ASSETS_PSEUDONYM_SALT in any real deployment


def pseudonym_salt() -> str:
    """Salt for pseudonymising user ids: $BACKFILL_ASSETS_PSEUDONYM_SALT (demo default if unset)."""
    return os.environ.get("BACKFILL_ASSETS_PSEUDONYM_SALT", DEMO_SALT)


daily = dg.DailyPartitionsDefinition(start_date=str(source.START))
weekly = dg.WeeklyPartitionsDefinition(start_date="2025-01-06", day_offset=1)  # ISO weeks, Monday first
monthly = dg.MonthlyPartitionsDefinition(start_date=str(source.START))
hourly = dg.HourlyPartitionsDefinition(start_date=f"{source.START}-00:00")  # UTC hours
REGIONS = ("americas", "apac", "emea")
day_by_region = dg.MultiPartitionsDefinition({"date": daily, "region": dg.StaticPartitionsDefinition(list(REGIONS))})

PLATFORM = "team:data-platform"
GROWTH = "team:growth-analytics"
FINANCE = "team:finance-analytics"

growth_kpis = bfa.Consumer("Growth KPIs dashboard", "dashboard", owners=["team:growth"])
finance_revenue = bfa.Consumer("Finance revenue dashboard", "dashboard", owners=["team:finance"])
crm_export = bfa.Consumer("CRM audience export", "export", owners=["team:crm"])
regional_board = bfa.Consumer("Regional revenue board", "dashboard", owners=["team:regional-finance"])
ops_monitor = bfa.Consumer("Traffic monitor", "dashboard", owners=["team:sre"])
engagement_report = bfa.Consumer("Product engagement report", "report", owners=["team:product"])

NON_NEGATIVE = [pa.Check.ge(0)]
CURRENCY_CODES = ("USD", "EUR", "GBP", "JPY")
CURRENCIES = [pa.Check.isin(CURRENCY_CODES)]
MAX_AMOUNT = 100_000  # no plan costs more in any currency; larger amounts are instrumentation bugs
# Bot traffic by user agent; three substring tests cost less than one regular expression.
IS_BOT = " OR ".join(f"contains(lower(user_agent), '{word}')" for word in ("bot", "crawler", "spider"))
# What must never leave raw_events: every derived table's blocking check `no_personal_data` looks for it.
PERSONAL_DATA = {"email address": bfa.EMAIL, "raw user id": r"^u[0-9]+$"}
# The sales region of a purchase, from its currency.
REGION_OF = "(VALUES ('USD', 'americas'), ('EUR', 'emea'), ('GBP', 'emea'), ('JPY', 'apac')) AS r(currency, region)"
FX_TO_USD = "(VALUES ('USD', 1.0), ('EUR', 1.08), ('GBP', 1.27), ('JPY', 0.0067)) AS fx(currency, usd_rate)"


def col(type_: str, description: str = "", **kw) -> bfa.Column:
    return bfa.Column(type_, description, nullable=kw.pop("nullable", False), **kw)


# --- raw_events ----------------------------------------------------------------------------

raw_events_spec = bfa.TableSpec(
    name="raw_events",
    description="App instrumentation as delivered, partitioned by ingest date (synthetic, deterministic).",
    partitions=daily,
    partition_column="ingest_date",
    grain=["delivery_id"],
    columns={
        "delivery_id": col("VARCHAR", "One delivery of an event; an event may be delivered twice."),
        "event_id": col("VARCHAR", "Client-generated event id."),
        "event_type": col("VARCHAR"),
        "client_ts": col("TIMESTAMP", "Client clock, local time."),
        "tz_offset_min": col("INTEGER", "Client UTC offset in minutes."),
        "user_id": col("VARCHAR", "Raw user id; NULL for anonymous traffic.", nullable=True),
        "anonymous_id": col("VARCHAR", nullable=True),
        "email": col("VARCHAR", "Personal data, on signups only.", nullable=True),
        "user_agent": col("VARCHAR"),
        "properties": col("VARCHAR", "JSON; 'plan' renamed to 'plan_id' on 2025-03-01.", nullable=True),
        "amount": col("DECIMAL(18,2)", nullable=True, checks=NON_NEGATIVE),
        "currency": col("VARCHAR", nullable=True, checks=CURRENCIES),
        "refund_of": col("VARCHAR", nullable=True),
        "ingest_date": col("DATE"),
    },
    metrics={"deliveries": "count(*)"},
    rules=[
        bfa.Invariant(
            "event_time_plausible",
            f"""SELECT delivery_id, event_type, client_ts, tz_offset_min, ingest_date FROM candidate
                WHERE tz_offset_min NOT BETWEEN -840 AND 840
                   OR client_ts - to_minutes(tz_offset_min) >= ingest_date + INTERVAL 1 DAY
                   OR client_ts - to_minutes(tz_offset_min) < ingest_date - INTERVAL {source.MAX_LATENESS_DAYS} DAY""",
            description=f"Event time (UTC) is on the delivery day or up to {source.MAX_LATENESS_DAYS} days before "
            "it: not in the future, not later than events_clean reads; offsets within ±14 h.",
        ),
        bfa.Invariant(
            "amounts_valid",
            f"""SELECT delivery_id, event_type, amount, currency FROM candidate
                WHERE amount < 0 OR amount > {MAX_AMOUNT}
                   OR currency NOT IN ({", ".join(f"'{c}'" for c in CURRENCY_CODES)})
                   OR (event_type IN ('purchase', 'refund')) <> (amount IS NOT NULL AND currency IS NOT NULL)""",
            description=f"Purchases and refunds, and only they, carry an amount in 0..{MAX_AMOUNT:,} and a known "
            "currency.",
        ),
    ],
    code_version="1",
    owners=[PLATFORM],
    group="ingest",
)

# --- events_clean --------------------------------------------------------------------------

EVENTS_CLEAN_SQL = f"""
WITH delivered AS (
    SELECT *, client_ts - to_minutes(tz_offset_min) AS event_ts_utc
    FROM raw_events
    WHERE ingest_date >= $start AND ingest_date < $end::DATE + INTERVAL {source.MAX_LATENESS_DAYS} DAY
      AND NOT ({IS_BOT})
),
first_delivery AS (
    SELECT * FROM delivered
    WHERE event_ts_utc >= $start AND event_ts_utc < $end
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ingest_date, delivery_id) = 1
)
SELECT
    event_id,
    event_ts_utc::DATE AS event_date,
    event_ts_utc,
    event_type,
    sha256($salt || coalesce('u:' || user_id, 'a:' || anonymous_id)) AS actor_key,
    user_id IS NULL AS is_anonymous,
    coalesce(json_extract_string(properties, '$.plan_id'), json_extract_string(properties, '$.plan')) AS plan,
    amount,
    currency,
    round(amount * fx.usd_rate, 2)::DECIMAL(18, 2) AS amount_usd,
    refund_of
FROM first_delivery LEFT JOIN {FX_TO_USD} USING (currency)
"""

events_clean_spec = bfa.TableSpec(
    name="events_clean",
    description="One row per real event: deduplicated, UTC dates, schema-mapped, bots dropped, "
    "identities pseudonymised. Day D reads raw partitions D..D+3 for late arrivals.",
    partitions=daily,
    partition_column="event_date",
    grain=["event_id"],
    # The newest days publish before their late events are in (raw D+1..D+3): provisional until then.
    incomplete_inputs="provisional",
    columns={
        "event_id": col("VARCHAR"),
        "event_date": col("DATE", "UTC date of the event."),
        "event_ts_utc": col("TIMESTAMP"),
        "event_type": col("VARCHAR"),
        "actor_key": col("VARCHAR", "Salted hash of the user or anonymous id."),
        "is_anonymous": col("BOOLEAN"),
        "plan": col("VARCHAR", nullable=True),
        "amount": col("DECIMAL(18,2)", nullable=True, checks=NON_NEGATIVE),
        "currency": col("VARCHAR", nullable=True, checks=CURRENCIES),
        "amount_usd": col("DECIMAL(18,2)", nullable=True, checks=NON_NEGATIVE),
        "refund_of": col("VARCHAR", nullable=True),
    },
    metrics={
        "events": "count(*)",
        "purchases_usd": "coalesce(sum(amount_usd) FILTER (event_type = 'purchase'), 0)",
        "net_revenue_usd": "coalesce(sum(CASE event_type WHEN 'purchase' THEN amount_usd "
        "WHEN 'refund' THEN -amount_usd END), 0)",
    },
    rules=[
        bfa.Reconcile(
            "events_match_raw",
            "events",
            f"""SELECT (client_ts - to_minutes(tz_offset_min))::DATE, count(DISTINCT event_id) FROM raw_events
                WHERE ingest_date >= $start AND ingest_date < $end::DATE + INTERVAL {source.MAX_LATENESS_DAYS} DAY
                  AND NOT ({IS_BOT}) GROUP BY 1""",
            description="One row per distinct non-bot event id delivered for the day.",
        ),
    ],
    max_row_change=0.2,
    consumers=[crm_export],
    code_version="1",
    owners=[PLATFORM],
    personal_data=PERSONAL_DATA,
    group="core",
)

# --- sessions ------------------------------------------------------------------------------

SESSIONS_SQL = """
WITH ev AS (
    SELECT actor_key, event_date, event_ts_utc, event_id,
           coalesce(event_ts_utc - lag(event_ts_utc) OVER w > INTERVAL 30 MINUTE, true) AS starts_session
    FROM events_clean
    WHERE event_date >= $start AND event_date < $end
    WINDOW w AS (PARTITION BY actor_key, event_date ORDER BY event_ts_utc, event_id)
),
numbered AS (
    SELECT *, sum(starts_session::INTEGER) OVER (
        PARTITION BY actor_key, event_date ORDER BY event_ts_utc, event_id ROWS UNBOUNDED PRECEDING) AS session_no
    FROM ev
)
SELECT md5(actor_key || ':' || event_date || ':' || session_no) AS session_id,
       event_date AS session_date,
       actor_key,
       min(event_ts_utc) AS started_at,
       max(event_ts_utc) AS ended_at,
       count(*) AS events,
       date_diff('second', min(event_ts_utc), max(event_ts_utc)) AS duration_s,
       session_no::BIGINT AS session_of_day
FROM numbered
GROUP BY actor_key, event_date, session_no
"""

sessions_spec = bfa.TableSpec(
    name="sessions",
    description="Sessions: an actor's events of a UTC day split by 30 minutes of inactivity.",
    partitions=daily,
    partition_column="session_date",
    grain=["session_id"],
    columns={
        "session_id": col("VARCHAR"),
        "session_date": col("DATE"),
        "actor_key": col("VARCHAR"),
        "started_at": col("TIMESTAMP"),
        "ended_at": col("TIMESTAMP"),
        "events": col("BIGINT", checks=[pa.Check.ge(1)]),
        "duration_s": col("BIGINT", checks=NON_NEGATIVE),
        "session_of_day": col(
            "BIGINT", "1 for the actor's first session of the day, then 2, 3, ...", checks=[pa.Check.ge(1)]
        ),
    },
    metrics={"sessions": "count(*)", "events": "sum(events)"},
    rules=[
        bfa.Reconcile(
            "events_in_sessions",
            "events",
            "SELECT * FROM bfa.published_metric('events_clean', 'events', $start, $end)",
            description="Every event of the day belongs to exactly one session (events_clean's recorded count).",
        ),
        bfa.Invariant("ends_after_start", "SELECT * FROM candidate WHERE ended_at < started_at"),
    ],
    consumers=[engagement_report, crm_export],
    code_version="2",
    owners=[GROWTH],
    personal_data=PERSONAL_DATA,
    group="engagement",
)

# --- daily_active_users --------------------------------------------------------------------

DAU_SQL = """
SELECT event_date AS activity_date,
       count(DISTINCT actor_key) AS dau,
       count(DISTINCT actor_key) FILTER (WHERE NOT is_anonymous) AS identified_users,
       count(DISTINCT actor_key) FILTER (WHERE is_anonymous) AS anonymous_actors,
       count(*) FILTER (WHERE event_type = 'signup') AS signups
FROM events_clean
WHERE event_date >= $start AND event_date < $end
GROUP BY 1
"""

daily_active_users_spec = bfa.TableSpec(
    name="daily_active_users",
    description="Distinct active actors per UTC day.",
    partitions=daily,
    partition_column="activity_date",
    grain=["activity_date"],
    columns={
        "activity_date": col("DATE"),
        "dau": col("BIGINT", "Distinct actors, identified or anonymous.", checks=NON_NEGATIVE),
        "identified_users": col("BIGINT", checks=NON_NEGATIVE),
        "anonymous_actors": col("BIGINT", checks=NON_NEGATIVE),
        "signups": col("BIGINT", checks=NON_NEGATIVE),
    },
    metrics={"dau": "sum(dau)", "signups": "sum(signups)"},
    rules=[
        bfa.Reconcile(
            "dau_matches_sessions",
            "dau",
            # Each active actor has exactly one first session of the day: a filtered count, where recounting
            # distinct actors over the sessions cost 0.6x the transform at 365 days (35M rows).
            "SELECT session_date, count(*) FILTER (WHERE session_of_day = 1) FROM sessions "
            "WHERE session_date >= $start AND session_date < $end GROUP BY 1",
            description="Active actors equal the actors' first sessions of the day.",
        ),
        bfa.Invariant(
            "identified_plus_anonymous", "SELECT * FROM candidate WHERE dau <> identified_users + anonymous_actors"
        ),
    ],
    consumers=[growth_kpis],
    code_version="1",
    owners=[GROWTH],
    personal_data=PERSONAL_DATA,
    group="engagement",
)

# --- funnel_daily --------------------------------------------------------------------------

FUNNEL_SQL = """
WITH actors AS (
    SELECT event_date, actor_key,
           bool_or(event_type = 'signup') AS signed_up,
           bool_or(event_type = 'trial_start') AS trialed,
           bool_or(event_type = 'purchase') AS purchased
    FROM events_clean
    WHERE event_date >= $start AND event_date < $end
    GROUP BY 1, 2
)
SELECT event_date AS funnel_date,
       count(*) AS visitors,
       count(*) FILTER (WHERE signed_up) AS signed_up,
       count(*) FILTER (WHERE signed_up AND trialed) AS started_trial,
       count(*) FILTER (WHERE signed_up AND trialed AND purchased) AS purchased
FROM actors
GROUP BY 1
"""

funnel_daily_spec = bfa.TableSpec(
    name="funnel_daily",
    description="Same-day acquisition funnel: visit -> signup -> trial -> purchase.",
    partitions=daily,
    partition_column="funnel_date",
    grain=["funnel_date"],
    columns={
        "funnel_date": col("DATE"),
        "visitors": col("BIGINT", checks=NON_NEGATIVE),
        "signed_up": col("BIGINT", checks=NON_NEGATIVE),
        "started_trial": col("BIGINT", checks=NON_NEGATIVE),
        "purchased": col("BIGINT", checks=NON_NEGATIVE),
    },
    metrics={"visitors": "sum(visitors)", "purchased": "sum(purchased)"},
    rules=[
        bfa.Invariant(
            "steps_monotonic",
            "SELECT * FROM candidate WHERE NOT (visitors >= signed_up AND signed_up >= started_trial "
            "AND started_trial >= purchased)",
            description="Each funnel step is at most the one before.",
        ),
        bfa.Reconcile(
            "visitors_are_dau",
            "visitors",
            "SELECT activity_date, dau FROM daily_active_users WHERE activity_date >= $start AND activity_date < $end",
            description="Visitors equal daily active users.",
        ),
    ],
    consumers=[growth_kpis],
    code_version="1",
    owners=[GROWTH],
    personal_data=PERSONAL_DATA,
    group="growth",
)

# --- revenue_daily -------------------------------------------------------------------------

REVENUE_DAILY_SQL = """
SELECT event_date AS revenue_date,
       currency,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
       count(*) FILTER (WHERE event_type = 'refund') AS refunds,
       coalesce(sum(amount_usd) FILTER (WHERE event_type = 'purchase'), 0)::DECIMAL(18, 2) AS gross_revenue_usd,
       coalesce(sum(amount_usd) FILTER (WHERE event_type = 'refund'), 0)::DECIMAL(18, 2) AS refunds_usd,
       (gross_revenue_usd - refunds_usd)::DECIMAL(18, 2) AS net_revenue_usd
FROM events_clean
WHERE event_date >= $start AND event_date < $end AND event_type IN ('purchase', 'refund')
GROUP BY 1, 2
"""

money = dict(checks=NON_NEGATIVE)
revenue_daily_spec = bfa.TableSpec(
    name="revenue_daily",
    description="Daily revenue in USD per original currency: gross, refunds, net.",
    partitions=daily,
    partition_column="revenue_date",
    grain=["revenue_date", "currency"],
    columns={
        "revenue_date": col("DATE"),
        "currency": col("VARCHAR", checks=CURRENCIES),
        "purchases": col("BIGINT", checks=NON_NEGATIVE),
        "refunds": col("BIGINT", checks=NON_NEGATIVE),
        "gross_revenue_usd": col("DECIMAL(18,2)", **money),
        "refunds_usd": col("DECIMAL(18,2)", **money),
        "net_revenue_usd": col("DECIMAL(18,2)", "Gross minus refunds; may be negative."),
    },
    metrics={
        "gross_revenue_usd": "sum(gross_revenue_usd)",
        "refunds_usd": "sum(refunds_usd)",
        "net_revenue_usd": "sum(net_revenue_usd)",
    },
    rules=[
        bfa.Reconcile(
            "net_is_purchases_minus_refunds",
            "net_revenue_usd",
            # events_clean's own metric, recorded when its version was audited: recomputing it here rescanned
            # the rows the transform had just read, at 0.5x the transform's time (365 days).
            "SELECT * FROM bfa.published_metric('events_clean', 'net_revenue_usd', $start, $end)",
            description="Net revenue equals purchases minus refunds in events_clean, to the cent.",
        ),
        bfa.Invariant(
            "net_row_arithmetic", "SELECT * FROM candidate WHERE net_revenue_usd <> gross_revenue_usd - refunds_usd"
        ),
    ],
    consumers=[finance_revenue],
    code_version="2",  # version 1 did not join refunds (see legacy.py and backfills/refunds-fix-2025q1.yaml)
    owners=[FINANCE],
    personal_data=PERSONAL_DATA,
    group="revenue",
)

# --- weekly_active_users -------------------------------------------------------------------

# Declared in YAML (a Dagster Component, validated by `dg check yaml`): defs/weekly_active_users/defs.yaml.
WAU_YAML = Path(__file__).parent / "defs" / "weekly_active_users" / "defs.yaml"
weekly_active_users = bfa.DerivedTable.from_defs_yaml(WAU_YAML)
weekly_active_users_spec = weekly_active_users.spec()

# --- retention_cohorts ---------------------------------------------------------------------

COHORT_WEEKS = 8
RETENTION_SQL = f"""
WITH signups AS (
    SELECT actor_key, min(date_trunc('week', event_date))::DATE AS cohort_week
    FROM events_clean
    WHERE event_type = 'signup' AND event_date >= $start::DATE - INTERVAL {7 * (COHORT_WEEKS - 1)} DAY
      AND event_date < $end
    GROUP BY 1
),
active AS (
    SELECT DISTINCT date_trunc('week', event_date)::DATE AS activity_week, actor_key
    FROM events_clean WHERE event_date >= $start AND event_date < $end
),
cohorts AS (SELECT cohort_week, count(*) AS cohort_size FROM signups GROUP BY 1),
weeks AS (SELECT DISTINCT activity_week FROM active)
SELECT w.activity_week,
       c.cohort_week,
       (date_diff('day', c.cohort_week, w.activity_week) // 7)::INTEGER AS weeks_since,
       c.cohort_size,
       count(a.actor_key) AS active_users,
       round(count(a.actor_key) / c.cohort_size, 4)::DOUBLE AS retention_rate
FROM weeks w
JOIN cohorts c ON c.cohort_week <= w.activity_week
 AND c.cohort_week > w.activity_week - INTERVAL {7 * COHORT_WEEKS} DAY
LEFT JOIN signups s ON s.cohort_week = c.cohort_week
LEFT JOIN active a ON a.activity_week = w.activity_week AND a.actor_key = s.actor_key
GROUP BY w.activity_week, c.cohort_week, c.cohort_size
"""

retention_cohorts_spec = bfa.TableSpec(
    name="retention_cohorts",
    description=f"Weekly retention: of the users who signed up in each of the last {COHORT_WEEKS} weeks, "
    "how many were active in the activity week.",
    partitions=weekly,
    partition_column="activity_week",
    grain=["activity_week", "cohort_week"],
    columns={
        "activity_week": col("DATE"),
        "cohort_week": col("DATE", "Week of the users' signup."),
        "weeks_since": col("INTEGER", checks=[pa.Check.in_range(0, COHORT_WEEKS - 1)]),
        "cohort_size": col("BIGINT", checks=[pa.Check.ge(1)]),
        "active_users": col("BIGINT", checks=NON_NEGATIVE),
        "retention_rate": col("DOUBLE", checks=[pa.Check.in_range(0, 1)]),
    },
    metrics={"active_users": "sum(active_users)"},
    rules=[
        bfa.Invariant("active_within_cohort", "SELECT * FROM candidate WHERE active_users > cohort_size"),
        bfa.Invariant(
            "week_zero_fully_active",
            "SELECT * FROM candidate WHERE weeks_since = 0 AND active_users <> cohort_size",
            description="Everyone is active in their signup week (the signup is an event).",
        ),
    ],
    consumers=[growth_kpis],
    code_version="1",
    owners=[GROWTH],
    personal_data=PERSONAL_DATA,
    group="growth",
)

# --- monthly_revenue -----------------------------------------------------------------------

MONTHLY_REVENUE_SQL = """
SELECT date_trunc('month', revenue_date)::DATE AS month_start,
       currency,
       sum(purchases)::BIGINT AS purchases,
       sum(refunds)::BIGINT AS refunds,
       sum(gross_revenue_usd)::DECIMAL(18, 2) AS gross_revenue_usd,
       sum(refunds_usd)::DECIMAL(18, 2) AS refunds_usd,
       sum(net_revenue_usd)::DECIMAL(18, 2) AS net_revenue_usd
FROM revenue_daily
WHERE revenue_date >= $start AND revenue_date < $end
GROUP BY 1, 2
"""

monthly_revenue_spec = bfa.TableSpec(
    name="monthly_revenue",
    description="Monthly revenue in USD per original currency, rolled up from revenue_daily.",
    partitions=monthly,
    partition_column="month_start",
    grain=["month_start", "currency"],
    columns={
        "month_start": col("DATE"),
        "currency": col("VARCHAR", checks=CURRENCIES),
        "purchases": col("BIGINT", checks=NON_NEGATIVE),
        "refunds": col("BIGINT", checks=NON_NEGATIVE),
        "gross_revenue_usd": col("DECIMAL(18,2)", **money),
        "refunds_usd": col("DECIMAL(18,2)", **money),
        "net_revenue_usd": col("DECIMAL(18,2)"),
    },
    metrics={"net_revenue_usd": "sum(net_revenue_usd)", "gross_revenue_usd": "sum(gross_revenue_usd)"},
    rules=[
        bfa.Reconcile(
            "net_matches_daily",
            "net_revenue_usd",
            "SELECT date_trunc('month', revenue_date)::DATE, sum(net_revenue_usd) FROM revenue_daily "
            "WHERE revenue_date >= $start AND revenue_date < $end GROUP BY 1",
            description="Monthly net revenue equals the sum of its days in revenue_daily.",
        ),
        bfa.Invariant(
            "month_fully_published_upstream",
            "SELECT month_start, count(DISTINCT d.revenue_date) AS days FROM candidate c "
            "LEFT JOIN revenue_daily d ON d.revenue_date >= c.month_start "
            "AND d.revenue_date < c.month_start + INTERVAL 1 MONTH "
            "GROUP BY 1 HAVING count(DISTINCT d.revenue_date) < "
            "date_diff('day', month_start, month_start + INTERVAL 1 MONTH)",
            description="Every day of the month is published in revenue_daily.",
        ),
    ],
    consumers=[finance_revenue],
    code_version="1",
    owners=[FINANCE],
    personal_data=PERSONAL_DATA,
    group="revenue",
)

# --- revenue_by_region ---------------------------------------------------------------------


# One partition per day and region: a backfill can be scoped to a region (`--where region=emea`). Every day
# and region has a row, zeros when nothing was sold there (APAC has days without a purchase).
def revenue_by_region_sql(counted: tuple[str, ...] = ("purchase", "refund")) -> str:
    """The transform of revenue_by_region over the `counted` event types (version 1 counted purchases only)."""
    return f"""
WITH sales AS (
    SELECT event_date, region, event_type, amount_usd FROM events_clean JOIN {REGION_OF} USING (currency)
    WHERE event_date >= $start AND event_date < $end AND event_type IN ({", ".join(f"'{t}'" for t in counted)})
)
SELECT d::DATE AS revenue_date,
       k.region,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
       count(*) FILTER (WHERE event_type = 'refund') AS refunds,
       coalesce(sum(amount_usd) FILTER (WHERE event_type = 'purchase'), 0)::DECIMAL(18, 2) AS gross_revenue_usd,
       coalesce(sum(amount_usd) FILTER (WHERE event_type = 'refund'), 0)::DECIMAL(18, 2) AS refunds_usd,
       (gross_revenue_usd - refunds_usd)::DECIMAL(18, 2) AS net_revenue_usd
FROM range($start::DATE, $end::DATE, INTERVAL 1 DAY) r(d) CROSS JOIN unnest($keys::VARCHAR[]) k(region)
LEFT JOIN sales s ON s.event_date = d::DATE AND s.region = k.region
GROUP BY 1, 2
"""


revenue_by_region_spec = bfa.TableSpec(
    name="revenue_by_region",
    description="Daily revenue in USD per sales region (from the purchase currency), partitioned by day x region.",
    partitions=day_by_region,
    partition_column={"date": "revenue_date", "region": "region"},
    grain=["revenue_date", "region"],
    columns={
        "revenue_date": col("DATE"),
        "region": col("VARCHAR", checks=[pa.Check.isin(REGIONS)]),
        "purchases": col("BIGINT", checks=NON_NEGATIVE),
        "refunds": col("BIGINT", checks=NON_NEGATIVE),
        "gross_revenue_usd": col("DECIMAL(18,2)", **money),
        "refunds_usd": col("DECIMAL(18,2)", **money),
        "net_revenue_usd": col("DECIMAL(18,2)", "Gross minus refunds; may be negative."),
    },
    metrics={"net_revenue_usd": "sum(net_revenue_usd)", "gross_revenue_usd": "sum(gross_revenue_usd)"},
    rules=[
        bfa.Reconcile(
            "net_matches_events",
            "net_revenue_usd",
            f"""SELECT event_date, region, sum(CASE event_type WHEN 'purchase' THEN amount_usd ELSE -amount_usd END)
                FROM events_clean JOIN {REGION_OF} USING (currency)
                WHERE event_date >= $start AND event_date < $end AND event_type IN ('purchase', 'refund')
                GROUP BY 1, 2""",
            description="Each day and region's net revenue equals its purchases minus refunds in events_clean.",
        ),
        bfa.Invariant(
            "net_row_arithmetic", "SELECT * FROM candidate WHERE net_revenue_usd <> gross_revenue_usd - refunds_usd"
        ),
    ],
    consumers=[regional_board],
    code_version="2",  # version 1 did not subtract refunds (see legacy.py and backfills/emea-refunds-2025-01.yaml)
    owners=[FINANCE],
    personal_data=PERSONAL_DATA,
    group="revenue",
)

# --- events_hourly -------------------------------------------------------------------------

# Every hour has a row, zeros when nothing happened (a quiet night at low volume).
EVENTS_HOURLY_SQL = """
WITH ev AS (
    SELECT date_trunc('hour', event_ts_utc) AS hour, event_type, actor_key FROM events_clean
    WHERE event_date BETWEEN $start::DATE AND $end::DATE AND event_ts_utc >= $start AND event_ts_utc < $end
)
SELECT h AS event_hour,
       count(event_type) AS events,
       count(DISTINCT actor_key) AS actors,
       count(*) FILTER (WHERE event_type = 'signup') AS signups,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases
FROM range($start, $end, INTERVAL 1 HOUR) r(h) LEFT JOIN ev ON ev.hour = h
GROUP BY 1
"""

events_hourly_spec = bfa.TableSpec(
    name="events_hourly",
    description="Events, distinct actors, signups and purchases per UTC hour.",
    partitions=hourly,
    partition_column="event_hour",
    grain=["event_hour"],
    columns={
        "event_hour": col("TIMESTAMP", "Start of the UTC hour."),
        "events": col("BIGINT", checks=NON_NEGATIVE),
        "actors": col("BIGINT", checks=NON_NEGATIVE),
        "signups": col("BIGINT", checks=NON_NEGATIVE),
        "purchases": col("BIGINT", checks=NON_NEGATIVE),
    },
    metrics={"events": "sum(events)", "purchases": "sum(purchases)"},
    rules=[
        bfa.Reconcile(
            "events_match_clean",
            "events",
            "SELECT date_trunc('hour', event_ts_utc), count(*) FROM events_clean "
            "WHERE event_date BETWEEN $start::DATE AND $end::DATE AND event_ts_utc >= $start AND event_ts_utc < $end "
            "GROUP BY 1",
            description="Each hour's events equal events_clean's events of that hour.",
        ),
        bfa.Invariant("actors_at_most_events", "SELECT * FROM candidate WHERE actors > events"),
    ],
    consumers=[ops_monitor],
    code_version="1",
    owners=[PLATFORM],
    personal_data=PERSONAL_DATA,
    group="core",
)

SPECS = [
    raw_events_spec,
    events_clean_spec,
    sessions_spec,
    daily_active_users_spec,
    funnel_daily_spec,
    revenue_daily_spec,
    weekly_active_users_spec,
    retention_cohorts_spec,
    monthly_revenue_spec,
    revenue_by_region_spec,
    events_hourly_spec,
]


def build_assets() -> list:
    """The pipeline's assets: the derived tables, plus the dashboards and exports that read them."""
    raw = bfa.derived_asset(
        raw_events_spec, source.raw_events, params=lambda: {"events_per_day": source.events_per_day()}
    )
    late_window = dg.TimeWindowPartitionMapping(start_offset=0, end_offset=source.MAX_LATENESS_DAYS)
    clean = bfa.derived_asset(
        events_clean_spec,
        EVENTS_CLEAN_SQL,
        deps=[dg.AssetDep(raw, partition_mapping=late_window)],
        params=lambda: {"salt": pseudonym_salt()},
    )
    sessions = bfa.derived_asset(sessions_spec, SESSIONS_SQL, deps=[clean])
    dau = bfa.derived_asset(daily_active_users_spec, DAU_SQL, deps=[clean, sessions])
    funnel = bfa.derived_asset(funnel_daily_spec, FUNNEL_SQL, deps=[clean, dau])
    revenue = bfa.derived_asset(revenue_daily_spec, REVENUE_DAILY_SQL, deps=[clean])
    wau = weekly_active_users.asset()  # reads events_clean and daily_active_users
    cohort_window = dg.TimeWindowPartitionMapping(start_offset=-(COHORT_WEEKS - 1), end_offset=0)
    retention = bfa.derived_asset(
        retention_cohorts_spec, RETENTION_SQL, deps=[dg.AssetDep(clean, partition_mapping=cohort_window)]
    )
    monthly_rev = bfa.derived_asset(monthly_revenue_spec, MONTHLY_REVENUE_SQL, deps=[revenue])
    by_region = bfa.derived_asset(revenue_by_region_spec, revenue_by_region_sql(), deps=[clean])
    hourly_events = bfa.derived_asset(events_hourly_spec, EVENTS_HOURLY_SQL, deps=[clean])  # an hour reads its day
    tables = [raw, clean, sessions, dau, funnel, revenue, wau, retention, monthly_rev, by_region, hourly_events]
    return [*tables, *bfa.consumer_specs(SPECS)]
