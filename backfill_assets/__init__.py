"""backfill-assets: partitioned, versioned, write-audit-publish derived tables for Dagster on DuckDB."""

from .audit import CheckOutcome
from .component import DerivedTable
from .factory import POOL, branch_job, consumer_specs, derived_asset
from .publish import RunReport, TransformContext, audit_published, write_audit_publish
from .spec import EMAIL, Column, Consumer, Invariant, Pattern, Reconcile, SpecError, TableSpec, quote_ident
from .warehouse import Warehouse, WarehouseError, WarehouseLockTimeout, published_partitions

__all__ = [
    "EMAIL",
    "POOL",
    "CheckOutcome",
    "Column",
    "Consumer",
    "DerivedTable",
    "Invariant",
    "Pattern",
    "Reconcile",
    "RunReport",
    "SpecError",
    "TableSpec",
    "TransformContext",
    "Warehouse",
    "WarehouseError",
    "WarehouseLockTimeout",
    "audit_published",
    "branch_job",
    "consumer_specs",
    "derived_asset",
    "published_partitions",
    "quote_ident",
    "write_audit_publish",
]
