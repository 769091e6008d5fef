"""A small payments project on backfill-assets: daily and monthly tables, a plain downstream asset."""
