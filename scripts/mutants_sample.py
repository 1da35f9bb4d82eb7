"""A fixed sample of mutants of the core that the suite must kill (CI runs it).

Each mutant breaks one guard the pipeline's correctness rests on (exactly-once terminal
state, fencing, strict caps, retention). The script copies the tracked tree into a
temporary folder, applies one mutant at a time and runs the tests that should notice;
a mutant that survives fails the run, so the mutation score of these guards cannot
silently fall. The full mutmut run and its score are in docs/testing.md.

    python scripts/mutants_sample.py            # a line per mutant, then a summary
    python scripts/mutants_sample.py --json     # the summary as one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


UNIT = ("tests/unit/store", "tests/unit/engine", "tests/unit/stages")

MUTANTS = (
    Mutant(
        "ended-job guard removed (a message for an ended job runs its stage)",
        "app/engine/pipeline.py",
        "    if found.is_terminal:\n",
        "    if False:\n",
        ("tests/unit/engine",),
    ),
    Mutant(
        "zombie fence removed (a superseded holder hands off)",
        "app/engine/pipeline.py",
        "    if not current:\n",
        "    if False:\n",
        ("tests/unit/engine",),
    ),
    Mutant(
        "a holder that lost the decision to a completion deletes the completed outputs",
        "app/engine/pipeline.py",
        "    if decision is None or decision.status is not JobStatus.COMPLETED:\n"
        "        discard_outputs(deps, outputs)\n",
        "    discard_outputs(deps, outputs)\n",
        ("tests/unit/engine",),
    ),
    Mutant(
        "cleanup gutted (nothing past retention is removed)",
        "app/engine/maintenance.py",
        "    now = deps.clock()\n    settings = deps.settings\n    report = {",
        "    return {}\n    now = deps.clock()\n    settings = deps.settings\n    report = {",
        ("tests/unit/engine",),
    ),
    Mutant(
        "terminal decision is a plain write (two terminal states possible)",
        "app/store/jobs.py",
        "        if not self.jobs.put_if_absent(terminal_key(job_id), _dump(decision)):\n"
        "            return False\n",
        "        self.jobs.put(terminal_key(job_id), _dump(decision))\n",
        UNIT,
    ),
    Mutant(
        "a release frees any tenure, not the one it names",
        "app/store/claims.py",
        "    return kv.put_if_absent(*release_marker(ref))\n",
        "    kv.put(*release_marker(ref))\n    return True\n",
        UNIT,
    ),
    Mutant(
        "a release marks the next tenure released (frees the next holder)",
        "app/store/claims.py",
        '    return released_key(ref.scope, ref.index, ref.generation), "1"\n',
        '    return released_key(ref.scope, ref.index, ref.generation + 1), "1"\n',
        UNIT,
    ),
    Mutant(
        "a held place is taken again (cap not strict)",
        "app/store/claims.py",
        "                _note_held(hints, index, generation, holder)\n                break\n",
        "                return SlotRef(scope=scope, index=index, generation=generation)\n",
        UNIT,
    ),
    Mutant(
        "the refusal screen skips released places (a freed place is never taken again)",
        "app/store/claims.py",
        "            if values[2 * n] is not None and values[2 * n + 1] is None:\n",
        "            if values[2 * n] is not None:\n",
        UNIT,
    ),
    Mutant(
        "a slot hint is trusted however old (a purged generation is held again)",
        "app/store/claims.py",
        "    if seen is not None and now is not None and -CLOCK_SKEW_S < now - seen < trust_s:\n",
        "    if seen is not None and now is not None:\n",
        # Its own tests: the state machine also kills it, but its shrinking took 11-103 s.
        ("tests/unit/store/test_trusted_hints.py",),
    ),
    Mutant(
        "cleanup purges a due hour's jobs that ended after the cutoff",
        "app/store/jobs.py",
        "                if terminal is not None and terminal.decided_at > cutoff:\n",
        "                if False:\n",
        ("tests/unit/store/test_retention.py", "tests/unit/engine/test_cleanup.py"),
    ),
    Mutant(
        "duplicate stage messages are not dropped",
        "app/store/jobs.py",
        "        return current and won\n",
        "        return current\n",
        UNIT,
    ),
    Mutant(
        "take_back hands a job to two reapers",
        "app/store/jobs.py",
        "        if not self.jobs.put_if_absent(epoch_key(job_id, lane, epoch + 1), "
        "str(self.clock())):\n            return None\n",
        "        self.jobs.put(epoch_key(job_id, lane, epoch + 1), str(self.clock()))\n",
        UNIT,
    ),
)


def copy_tree(target: Path) -> None:
    """The tracked and untracked-not-ignored files, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


def run_mutant(tree: Path, mutant: Mutant, timeout_s: float) -> tuple[str, float]:
    """'killed', 'survived', 'timeout' or 'stale' (the original text is gone)."""
    path = tree / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        return "stale", 0.0
    path.write_text(text.replace(mutant.original, mutant.mutated))
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests]
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, timeout=timeout_s, check=False
        )
        outcome = "survived" if result.returncode == 0 else "killed"
    except subprocess.TimeoutExpired:
        outcome = "timeout"  # counted as killed by mutmut too, but reported apart
    finally:
        path.write_text(text)
    return outcome, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per mutant")
    args = parser.parse_args()
    outcomes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        tree = Path(scratch)
        copy_tree(tree)
        for mutant in MUTANTS:
            outcome, took_s = run_mutant(tree, mutant, args.timeout_s)
            outcomes[mutant.name] = outcome
            if not args.json:
                print(f"{outcome:8} {took_s:6.1f}s  {mutant.path}: {mutant.name}")
    killed = sum(1 for o in outcomes.values() if o in ("killed", "timeout"))
    summary = {
        "mutants": len(MUTANTS),
        "killed": killed,
        "survived": [n for n, o in outcomes.items() if o == "survived"],
        "stale": [n for n, o in outcomes.items() if o == "stale"],
    }
    print(json.dumps(summary) if args.json else f"{killed}/{len(MUTANTS)} killed")
    return 0 if killed == len(MUTANTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
