"""Smoke-test a deployed API end to end and print a JSON summary (exit 1 if a check fails).

    python scripts/smoke.py --url https://<workspace>--comfyui-saas-api.modal.run \
        --api-key "$ACME_KEY" --user smoke-alice --other-api-key "$BETA_KEY"

The URL and key default to COMFYUI_SAAS_API_URL and COMFYUI_SAAS_API_KEY (read through
the project's Settings). Jobs are submitted as `--user` (X-User-ID); the ownership check
reads them as `<user>-other` with the same key, and as `--user` with `--other-api-key`
(another tenant's key) when given. The burst check uses a fresh user each run. Inputs
are only exercised with `--input-url` (an image the deployment may fetch). See
app/clients/smoke.py for the checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.clients.proxy_auth import proxy_auth_headers
from app.clients.smoke import SmokeConfig, run_smoke
from app.core.config import Settings
from app.core.schemas import USER_ID


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every check, print the summary."""
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=settings.api_url, help="the deployed API's base URL")
    parser.add_argument("--api-key", default=settings.api_key.get_secret_value())
    parser.add_argument("--user", default="smoke", help="X-User-ID of the smoke jobs")
    parser.add_argument("--other-api-key", default=None, help="a key of another tenant")
    parser.add_argument(
        "--input-url", default=None, help="an image URL for the inputs check (skipped without)"
    )
    parser.add_argument("--job-timeout-s", type=float, default=600.0)
    parser.add_argument("--poll-interval-s", type=float, default=2.0)
    parser.add_argument(
        "--burst-accepted",
        type=int,
        default=settings.max_active_jobs_per_user,
        help="the per-user cap of active jobs in force for the key's tenant",
    )
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key is needed (--api-key or COMFYUI_SAAS_API_KEY)")
    if not USER_ID.match(args.user) or len(args.user) > 100:
        parser.error("--user must be 1-100 letters, digits or ._:@-")
    config = SmokeConfig(
        api_key=args.api_key,
        user_id=args.user,
        other_api_key=args.other_api_key,
        input_url=args.input_url,
        job_timeout_s=args.job_timeout_s,
        poll_interval_s=args.poll_interval_s,
        burst_accepted=args.burst_accepted,
    )
    summary = run_smoke(args.url, config, proxy_headers=proxy_auth_headers(settings))
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
