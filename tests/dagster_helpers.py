"""Helpers for tests that run a real `dagster dev`: a free loopback port, the GraphQL API the UI uses, the
process itself (own session, stopped by process group) and waits for runs and backfills to end."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backfill_assets import instance

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IN_PROGRESS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]

BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status title description tags { key value }
      runs(limit: 100) { runId status tags { key value } }
    }
  }
}"""
RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId status
      assetSelection { path }
      assetCheckSelection { name assetKey { path } }
      tags { key value }
    }
  }
}"""
RUN_EVENTS = """
query($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on MaterializationEvent { partition assetKey { path } }
        ... on AssetCheckEvaluationEvent { evaluation { checkName success assetKey { path } } }
      }
    }
  }
}"""
ASSET_EVENTS = """
query($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetObservations(limit: 1) { runId description }
      assetMaterializations(limit: 1) {
        runId partition description
        metadataEntries { label ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue } }
      }
    }
  }
}"""
BUSY = """
query($statuses: [RunStatus!]) {
  runsOrError(filter: {statuses: $statuses}) { ... on Runs { results { runId status } } }
  partitionBackfillsOrError(status: REQUESTED) { ... on PartitionBackfills { results { id } } }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: Mapping | None = None) -> dict:
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback URL built here)
        payload = json.load(response)
    assert "errors" not in payload, payload
    return payload["data"]


@dataclass(frozen=True)
class DagsterDev:
    """A running `dagster dev`: its URL, warehouse file, Dagster home, log file and the environment it runs with
    (use the same environment for the CLI, so both see one instance and one warehouse)."""

    url: str
    db: Path
    home: Path
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def dagster_env(tmp_path: Path, events_per_day: str = "300") -> dict[str, str]:
    """A fresh Dagster home (with the shipped instance config) and warehouse path under `tmp_path`."""
    home = tmp_path / "dagster_home"
    instance.init(home)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BACKFILL_ASSETS_DB": str(tmp_path / "warehouse.duckdb"),
        "BACKFILL_ASSETS_DEMO_EVENTS_PER_DAY": events_per_day,
    }


@contextlib.contextmanager
def dagster_dev(
    tmp_path: Path,
    env: Mapping[str, str],
    start_timeout_s: float = 120,
    command: Sequence[str] = (str(BIN / "dagster"), "dev", "-w", "workspace.yaml"),
    cwd: Path = ROOT,
) -> Iterator[DagsterDev]:
    """`command` (default: `dagster dev -w workspace.yaml` on the reference pipeline) on a free 127.0.0.1 port with
    `env` (see :func:`dagster_env`), in its own session; stopped by process group (SIGTERM, then SIGKILL after
    60 s) however the block ends."""
    port = free_port()
    log_path = tmp_path / "dagster_dev.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    urllib.request.urlopen(f"{url}/server_info", timeout=2)  # noqa: S310
                    break
                except OSError:
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, f"dagster dev did not start within {start_timeout_s:.0f} s"
                    time.sleep(1)
            yield DagsterDev(url, Path(env["BACKFILL_ASSETS_DB"]), Path(env["DAGSTER_HOME"]), log_path, dict(env))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_cli(env: Mapping[str, str], *args: str, timeout_s: float = 300) -> str:
    """`backfill-assets *args` from the project root; asserts it succeeds and returns what it printed."""
    done = subprocess.run(
        [str(BIN / "backfill-assets"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run_cli_fails(env: Mapping[str, str], *args: str, timeout_s: float = 300) -> str:
    """`backfill-assets *args` from the project root; asserts it fails (exit 1) and returns what it printed."""
    done = subprocess.run(
        [str(BIN / "backfill-assets"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout + done.stderr


def wait_for_backfill(url: str, backfill_id: str, timeout_s: float = 420, poll_s: float = 2) -> dict:
    """The backfill once it is no longer requested or canceling (completed, failed or canceled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        backfill = graphql(url, BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] not in ("REQUESTED", "CANCELING"):
            return backfill
        assert time.monotonic() < deadline, f"backfill {backfill_id} still {backfill['status']} after {timeout_s} s"
        time.sleep(poll_s)


def wait_for_run(url: str, run_id: str, timeout_s: float = 300, poll_s: float = 1) -> dict:
    """The run once it has finished (SUCCESS, FAILURE or CANCELED)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = graphql(url, RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] not in IN_PROGRESS:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout_s} s"
        time.sleep(poll_s)


def run_events(url: str, run_id: str) -> list[dict]:
    return graphql(url, RUN_EVENTS, {"runId": run_id})["logsForRun"]["events"]


def latest_asset_events(url: str, asset: str) -> dict:
    """Dagster's newest observation and materialization of `asset` (e.g. "consumers/finance_revenue_dashboard"),
    each None when there is none; a materialization's metadata as a dict label -> value."""
    found = graphql(url, ASSET_EVENTS, {"key": {"path": asset.split("/")}})["assetOrError"]
    assert found["__typename"] == "Asset", found
    observations, materializations = found["assetObservations"], found["assetMaterializations"]
    materialization = materializations[0] if materializations else None
    if materialization is not None:
        entries = materialization.pop("metadataEntries")
        materialization["metadata"] = {e["label"]: e.get("text", e.get("intValue")) for e in entries}
    return {"observation": observations[0] if observations else None, "materialization": materialization}


def assert_idle(url: str) -> None:
    """No run in progress and no backfill requested: nothing holds the warehouse's write lock."""
    busy = graphql(url, BUSY, {"statuses": IN_PROGRESS})
    assert busy["runsOrError"]["results"] == [], busy
    assert busy["partitionBackfillsOrError"]["results"] == [], busy
