"""Land the raw payments a real project would load from its payment provider: `python -m payments.landing`."""

import os
import sys

import duckdb

RAW = """
CREATE OR REPLACE TABLE raw_payments AS
SELECT TIMESTAMP '2025-01-01 00:00:00' + i * INTERVAL 37 MINUTE AS paid_at,
       'p-' || i AS payment_id,
       ['DE', 'FR', 'NL', 'PL'][1 + (i * 7) % 4] AS country,
       (1 + (i * 7919) % 50000 / 100)::DECIMAL(18,2) AS amount,
       ((1 + (i * 7919) % 50000 / 100) * 0.029 + 0.25)::DECIMAL(18,2) AS fee
FROM range(?) t(i)
"""


def land(database: str, payments: int = 3500) -> None:
    """About 39 payments a day from 2025-01-01 (3500: through early April)."""
    with duckdb.connect(database) as con:
        con.execute(RAW, [payments])


if __name__ == "__main__":
    land(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PAYMENTS_DB", "payments.duckdb"))
