"""The reliability run: many SIGKILLs of a ranged backfill, a long state-machine run over publish, hold,
approve, rollback, vacuum and crash, and the bad-input corpus; then one report. Exits non-zero on any failure.

    python scripts/reliability.py [--kills 50] [--examples 300]     (make reliability)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET  # noqa: S405 -- parses the junit file pytest just wrote
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["tests/test_crash.py", "tests/test_state_machine.py", "tests/test_bad_input.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the crash harness")
    parser.add_argument("--examples", type=int, default=300, help="random histories of the state machine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bfa-reliability-") as tmp:
        figures, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        env = {
            **os.environ,
            "BACKFILL_ASSETS_CRASH_KILLS": str(args.kills),
            "BACKFILL_ASSETS_STATE_EXAMPLES": str(args.examples),
            "BACKFILL_ASSETS_RELIABILITY_REPORT": str(figures),
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *SUITES]
        code = subprocess.run(cmd, cwd=ROOT, env=env).returncode  # noqa: S603 -- our own test suite
        lines = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
        cases = Counter()
        for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 -- our own file
            outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else "passed"
            cases[(Path(case.get("classname", "").replace(".", "/")).name, outcome)] += 1
    crash = next((f for f in lines if f["kind"] == "crash"), None)
    states = next((f for f in lines if f["kind"] == "state_machine"), None)
    bad_total = cases[("test_bad_input", "passed")] + cases[("test_bad_input", "failed")]
    failed = sum(n for (_, outcome), n in cases.items() if outcome == "failed")
    print("\nReliability report")
    if crash:
        survived = crash["kills"] - crash["kills_violated"]
        print(f"  kills survived:        {survived} of {crash['kills']} over a {crash['run_seconds']}s run "
              f"(state each left: {crash['phases']})")  # fmt: skip
        print(f"  rows lost:             {crash['rows_lost']}")
    else:
        print("  kills survived:        no figures: the crash harness did not finish")
    if states:
        print(f"  state machine:         {states['examples']} random histories of up to {states['steps']} steps")
    print(f"  bad inputs tried:      {bad_total} ({cases[('test_bad_input', 'failed')]} not handled cleanly)")
    violations = len(crash["violations"]) if crash else "unknown"
    print(f"  invariant violations:  {violations}")
    print(f"  failed tests:          {failed}")
    return code


if __name__ == "__main__":
    sys.exit(main())
