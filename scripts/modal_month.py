"""A simulated month of production on the emulated Modal app.

    python scripts/modal_month.py --days 30 --dau 2000 [--seed 0] [--json] [--progress]

Runs the real Modal app (`app.deploy.modal.app`) on the semantic Modal emulator in
`tests/modal_emulator` with an accelerated clock: `--dau` daily active users x 5 jobs a
day across several tenants (a quarter of them idle for more than 7 days), one burst that
fills the render queue, render containers killed mid-message, and the schedules (sweep
every minute, fail_stale, cleanup hourly) firing as the clock moves; then quiet days until
retention has removed every job. See `tests/modal_emulator/month.py`.

With `--json` prints one JSON line; the counters `lost`, `double_terminal`, `stuck`,
`tenants_lost`, `leaked_slots`, `keys_left_of_retained_jobs`, `hung_puts` should all be
0. `maintenance_rpcs_max` is the most round trips one maintenance run made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.logs import configure_logging  # noqa: E402
from tests.modal_emulator.month import Month  # noqa: E402

ZERO = (
    "lost",
    "double_terminal",
    "stuck",
    "tenants_lost",
    "leaked_slots",
    "keys_left_of_retained_jobs",
    "hung_puts",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--dau", type=int, default=2000, help="daily active users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--progress", action="store_true", help="a line per simulated day on stderr"
    )
    args = parser.parse_args(argv)
    configure_logging("ERROR", json_lines=False)
    logging.disable(logging.WARNING)
    progress = sys.stderr if args.progress else None
    result = Month(args.days, args.dau, seed=args.seed, progress=progress).run()
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            flag = "  <-- expected 0" if key in ZERO and value else ""
            print(f"{key:<{width}}  {value}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
