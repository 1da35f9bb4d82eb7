"""Memory: peak RSS of every pipeline process and the state files after a throughput run.

    python scripts/bench/memory.py [--seconds 30] [--config 1/2/1/1/1] [--comfyui-url URL] [--json]

Runs `throughput.py`'s sustained load for `--seconds` and then reads each process's peak
resident set (VmHWM in /proc) and the sizes of the files in the data folder (the SQLite
database and its WAL, the output store, the scratch folder).
"""

from __future__ import annotations

import _stack
import throughput


def main() -> None:
    parser = throughput.parser()
    parser.description = __doc__
    parser.set_defaults(seconds=30.0, profile_s=0.0)
    args = parser.parse_args()
    results = throughput.run(args)
    for r in results:
        _stack.print_table(
            f"peak RSS after {r['seconds']} s at {r['jobs_per_s']} jobs/s "
            f"({r['completed']} jobs), workers {r['config']}; load {r['load_after']}",
            ["process", "peak RSS MiB"],
            sorted(r["peak_rss_mib"].items()),
        )
        _stack.print_table("state files", ["file", "bytes"], sorted(r["state_files_bytes"].items()))
    if args.json:
        first = results[0]
        _stack.print_json(
            {
                "bench": "memory",
                "completed": first["completed"],
                "peak_rss_mib": first["peak_rss_mib"],
                "total_peak_rss_mib": round(sum(first["peak_rss_mib"].values()), 1),
                "state_files_bytes": first["state_files_bytes"],
                "configs": [
                    {k: r[k] for k in ("config", "peak_rss_mib", "state_files_bytes", "completed")}
                    for r in results
                ],
                "load_after": first["load_after"],
            }
        )


if __name__ == "__main__":
    main()
