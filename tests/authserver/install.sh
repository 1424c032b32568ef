#!/bin/sh
# install.sh — install the test servers' npm dependencies (oidc-provider),
# exactly as pinned in package-lock.json, into ./node_modules.
# Does nothing (and says nothing) when node_modules is already up to date.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! command -v node >/dev/null 2>&1; then
  echo "tests/authserver/install.sh: node not found; install Node.js >= 20 (e.g. apt-get install nodejs npm)" >&2
  exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "tests/authserver/install.sh: npm not found; install npm (e.g. apt-get install npm)" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "tests/authserver/install.sh: node $(node -v) is too old; oidc-provider 9 needs Node.js >= 20" >&2
  exit 1
fi

stamp=node_modules/.package-lock.json
if [ -f "$stamp" ] && [ ! "$stamp" -ot package-lock.json ] && [ -f node_modules/oidc-provider/package.json ]; then
  exit 0
fi

if ! npm ci --no-audit --no-fund --silent; then
  echo "tests/authserver/install.sh: 'npm ci' failed in $here" >&2
  exit 1
fi
