#!/usr/bin/env bash
# Starts (or reuses) a private PostgreSQL for the tests of images/go_ingest and images/live_py.
# It never touches a system cluster: its data directory, socket and log live in $SAWMILL_PG_DIR
# (default /tmp/sawmill-pg); it listens on 127.0.0.1:$SAWMILL_PG_PORT (default 55432) only, with trust
# authentication on loopback (test use only). As root it runs the server as the `postgres` user (created by
# Debian's postgresql package); otherwise as the calling user.
#   hack/postgres.sh start   start it if it is not answering; prints the DSN to use (SAWMILL_TEST_PG_DSN)
#   hack/postgres.sh stop    stop it (the data directory stays, so the next start is fast)
#   hack/postgres.sh env     prints the DSN only
# Needs Debian's postgresql package: apt-get install -y postgresql
set -euo pipefail
dir=${SAWMILL_PG_DIR:-/tmp/sawmill-pg}
port=${SAWMILL_PG_PORT:-55432}
db=sawmill

bindir=${SAWMILL_PG_BINDIR:-}
if [ -z "$bindir" ]; then
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do bindir=$d; break; done
fi
if [ "$(id -u)" = 0 ]; then
  user=postgres
  id "$user" >/dev/null 2>&1 || useradd --system --home-dir "$dir" --shell /usr/sbin/nologin "$user"
  as() { runuser -u "$user" -- "$@"; }
else
  user=$(id -un)
  as() { "$@"; }
fi
dsn="postgres://$user@127.0.0.1:$port/$db?sslmode=disable"

answering() { [ -n "$bindir" ] && "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U "$user"; }

case "${1:-start}" in
start)
  [ -n "$bindir" ] && [ -x "$bindir/initdb" ] || { echo "PostgreSQL not found: apt-get install -y postgresql" >&2; exit 1; }
  if ! answering; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown "$user" "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as "$bindir/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { echo "initdb failed; see $dir/initdb.log" >&2; tail -20 "$dir/initdb.log" >&2; exit 1; }
    fi
    # -k: the socket lives in our own directory, not /var/run/postgresql.
    as "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null \
      || { echo "postgres did not start; see $dir/postgres.log" >&2; tail -20 "$dir/postgres.log" >&2; exit 1; }
  fi
  if ! as "$bindir/psql" -h 127.0.0.1 -p "$port" -U "$user" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    as "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$user" "$db"
  fi
  echo "$dsn"
  ;;
stop)
  if [ -f "$dir/data/postmaster.pid" ]; then as "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true; fi
  ;;
env)
  echo "$dsn"
  ;;
*) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
