#!/usr/bin/env bash
# Deploy the whole pipeline to Modal in one command (docs/deploy-modal.md).
# Settings come from the COMFYUI_SAAS_* variables of this shell (see .env.example);
# credentials come from the Modal Secrets named there, never from this script.
set -euo pipefail
cd "$(dirname "$0")/.."
exec modal deploy -m app.deploy.modal.app "$@"
