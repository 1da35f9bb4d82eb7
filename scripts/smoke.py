"""Smoke-test a deployed API end to end and print a JSON summary (exit 1 if a check fails).

    python scripts/smoke.py --url https://<workspace>--comfyui-saas-api.modal.run \
        --api-key "$KEY" --other-api-key "$OTHER_USERS_KEY"

The URL and key default to COMFYUI_SAAS_API_URL and COMFYUI_SAAS_API_KEY (read through
the project's Settings). The user behind --api-key must have no active jobs: the burst
check expects the default cap of 5 to be free. See app/smoke.py for the checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from app.config import Settings
from app.smoke import SmokeConfig, run_all


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every check, print the summary."""
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=settings.api_url, help="the deployed API's base URL")
    parser.add_argument("--api-key", default=settings.api_key.get_secret_value())
    parser.add_argument("--other-api-key", default=None, help="a key of another user")
    parser.add_argument("--job-timeout-s", type=float, default=600.0)
    parser.add_argument("--burst-accepted", type=int, default=settings.max_active_jobs_per_user)
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key is needed (--api-key or COMFYUI_SAAS_API_KEY)")
    config = SmokeConfig(
        api_key=args.api_key,
        other_api_key=args.other_api_key,
        job_timeout_s=args.job_timeout_s,
        burst_accepted=args.burst_accepted,
    )
    with httpx.Client(base_url=args.url, timeout=30.0, follow_redirects=False) as client:
        summary = run_all(client, config, args.url)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
