#!/usr/bin/env bash
# A fresh machine (Python 3.11, Java 17+, Maven) to the running system, in one command:
#   bash deploy/quickstart.sh
# It installs ScriptForge in .venv and runs `scriptforge dev`: the local Kafka broker, the topics, the
# example scripts deployed, and a worker in the foreground (Ctrl-C stops the worker; the broker stays:
# `.venv/bin/scriptforge broker stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/scriptforge dev
