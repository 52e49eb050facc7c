#!/usr/bin/env bash
# Run the whole test suite: pure functions, losses, trainers on the tiny model, the CLI, the book build and a
# browser check of the rendered pages (headless Chromium; installed here when missing and we are root).
set -euo pipefail
venv=${1:-.venv}
shift || true
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && [ -z "${COMPANION_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium for the browser check of the rendered book"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "==> could not install chromium: the browser check will be skipped"
  else
    echo "==> chromium not found (install it, or set COMPANION_CHROMIUM=/path/to/chrome): the browser check will be skipped"
  fi
fi

echo "==> running the test suite"
exec "$venv/bin/python" -m pytest "$@"
