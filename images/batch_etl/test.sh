#!/usr/bin/env bash
# Runs batch_etl's tests with Debian's Python (which sees python3-psycopg2; PyPI is not needed):
#   apt-get install -y python3-psycopg2 postgresql
#   export SAWMILL_TEST_PG_DSN=$(hack/postgres.sh start)
#   images/batch_etl/test.sh
# Without SAWMILL_TEST_PG_DSN the database tests are skipped, unless CI=true (then they fail). The DAG parse
# check runs where Airflow is importable and is skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")"
py=${BATCH_ETL_TEST_PYTHON:-/usr/bin/python3}
"$py" -c 'import psycopg2' 2>/dev/null || { echo "$py cannot import psycopg2: apt-get install -y python3-psycopg2" >&2; exit 1; }
exec "$py" -B -m unittest -v test_etl "$@"
