#!/usr/bin/env bash
# A fresh machine (Python 3.11, Java 17+, Maven) to a running local Kafka broker, in one command:
#   bash deploy/quickstart.sh
# Later this becomes `scriptforge dev` (broker, worker, API and console on one machine).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/scriptforge broker start
