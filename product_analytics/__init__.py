"""The reference product-analytics pipeline: a user of backfill_assets' public API."""
