#!/usr/bin/env bash
# Runs live_py's tests with Debian's Python (which sees python3-psycopg2; PyPI is not needed):
#   apt-get install -y python3-psycopg2 postgresql
#   export SAWMILL_TEST_PG_DSN=$(hack/postgres.sh start)
#   images/live_py/test.sh
# Without SAWMILL_TEST_PG_DSN the database tests are skipped, unless CI=true (then they fail).
set -euo pipefail
cd "$(dirname "$0")"
py=${LIVE_PY_TEST_PYTHON:-/usr/bin/python3}
"$py" -c 'import psycopg2' 2>/dev/null || { echo "$py cannot import psycopg2: apt-get install -y python3-psycopg2" >&2; exit 1; }
exec "$py" -B -m unittest -v test_live test_browser "$@"
