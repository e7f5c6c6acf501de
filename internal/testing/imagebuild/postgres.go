package imagebuild

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// postgresUID is the uid and gid of the postgres user, as in the upstream postgres image.
const postgresUID = 999

// PostgresDebian assembles a PostgreSQL server image from the Debian packages installed on this machine.
//
// It takes the server and client packages of the newest major version in /usr/lib/postgresql (postgresql-15
// on bookworm; `apt-get install postgresql`), the time zone database, bash and dash, and the shared libraries
// all of them need. The image follows the upstream postgres image's interface: POSTGRES_USER,
// POSTGRES_PASSWORD(_FILE), POSTGRES_DB, POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, PGDATA, the
// scripts in /docker-entrypoint-initdb.d, pg_isready and psql on PATH, port 5432, stop signal SIGINT. It runs
// as uid/gid 999 (postgres). There is no LLVM JIT (jit = off). The same installed files give the same digest.
func PostgresDebian() (v1.Image, error) {
	major, err := postgresMajor("/usr/lib/postgresql")
	if err != nil {
		return nil, err
	}
	bin := "/usr/lib/postgresql/" + major + "/bin"
	lib := "/usr/lib/postgresql/" + major + "/lib/"
	share := "/usr/share/postgresql/" + major + "/"
	sample, err := os.ReadFile(share + "postgresql.conf.sample")
	if err != nil {
		return nil, fmt.Errorf("postgresql %s: %w", major, err)
	}
	// As upstream: the server listens on all addresses. The LLVM JIT is left out of the image.
	sample = append(sample, []byte("\n# imagebuild.PostgresDebian: listen on all addresses as the upstream image does; the image has no LLVM JIT.\n"+
		"listen_addresses = '*'\njit = off\n")...)
	dataDir := "/var/lib/postgresql/data"
	d := debianImage{
		Packages: []string{"postgresql-" + major, "postgresql-client-" + major, "tzdata"},
		Exclude: func(p string) bool {
			return excludeDocs(p) ||
				strings.HasPrefix(p, share+"man/") ||
				strings.HasPrefix(p, lib+"bitcode/") || // LLVM bitcode, for the JIT only
				strings.HasPrefix(p, lib+"llvmjit") || // pulls in libLLVM (~100 MB)
				strings.HasPrefix(p, lib+"pgxs/") // extension build and regression-test scaffolding
		},
		// The entrypoint runs in bash, as upstream's, which sources non-executable *.sh init scripts (and an
		// executable one may start with #!/bin/bash). /bin/sh is dash: initdb, pg_ctl, archive_command and
		// COPY ... PROGRAM run commands through it. cat and tr for init scripts that read secret files. initdb
		// runs `locale -a` to import the system's collations; C.utf8 is the one locale in the image (LANG).
		Paths: []string{"/bin/bash", "/bin/dash", "/bin/cat", "/usr/bin/tr", "/usr/bin/locale", "/usr/lib/locale/C.utf8"},
		Files: []file{
			{Path: "/bin/sh", Mode: fs.ModeSymlink | 0o777, Data: []byte("/bin/dash")},
			{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n" +
				"postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n")},
			{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\npostgres:x:999:\n")},
			{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
			{Path: "/docker-entrypoint-initdb.d", Mode: fs.ModeDir | 0o755},
			{Path: "/var/lib/postgresql", Mode: fs.ModeDir | 0o755, UID: postgresUID, GID: postgresUID},
			{Path: dataDir, Mode: fs.ModeDir | 0o700, UID: postgresUID, GID: postgresUID},
			{Path: "/var/run/postgresql", Mode: fs.ModeDir | fs.ModeSetgid | 0o775, UID: postgresUID, GID: postgresUID},
			{Path: share + "postgresql.conf.sample", Mode: 0o644, Data: sample},
			{Path: "/usr/local/bin/docker-entrypoint.sh", Mode: 0o755, Data: []byte(postgresEntrypoint)},
			{Path: "/docker-entrypoint.sh", Mode: fs.ModeSymlink | 0o777, Data: []byte("usr/local/bin/docker-entrypoint.sh")},
		},
		Config: v1.Config{
			Entrypoint: []string{"docker-entrypoint.sh"},
			Cmd:        []string{"postgres"},
			Env: []string{
				"PATH=" + bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"PG_MAJOR=" + major,
				"PGDATA=" + dataDir,
				"TZ=UTC",
				"LANG=C.UTF-8",
			},
			User:         strconv.Itoa(postgresUID) + ":" + strconv.Itoa(postgresUID),
			ExposedPorts: map[string]struct{}{"5432/tcp": {}},
			Volumes:      map[string]struct{}{dataDir: {}},
			StopSignal:   "SIGINT", // fast shutdown, as upstream
		},
	}
	img, err := d.build()
	if err != nil {
		return nil, fmt.Errorf("postgresql %s image: %w", major, err)
	}
	return img, nil
}

// postgresMajor returns the newest major version with a server binary in dir (/usr/lib/postgresql).
func postgresMajor(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("find the PostgreSQL version: %w", err)
	}
	best, bestV := "", -1.0
	for _, e := range entries {
		v, perr := strconv.ParseFloat(e.Name(), 64) // 15, 16, or 9.6
		if perr != nil {
			continue
		}
		if _, serr := os.Stat(path.Join(dir, e.Name(), "bin", "postgres")); serr == nil && v > bestV {
			best, bestV = e.Name(), v
		}
	}
	if best == "" {
		return "", fmt.Errorf("no PostgreSQL server is installed on this machine (no %s/<major>/bin/postgres): apt-get install postgresql", dir)
	}
	return best, nil
}

// postgresEntrypoint is /usr/local/bin/docker-entrypoint.sh: the upstream image's entrypoint, reduced to what
// this image needs. It runs as the postgres user (uid 999); the password never reaches a command line, the
// log, or the server's environment.
const postgresEntrypoint = `#!/bin/bash
# docker-entrypoint.sh (sawmill imagebuild.PostgresDebian): the interface of the upstream postgres image.
set -Eeo pipefail

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE (not both).
file_env() {
	local var="$1" fileVar="${1}_FILE" def="${2:-}" val
	if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
		printf >&2 'error: both %s and %s are set (but are exclusive)\n' "$var" "$fileVar"
		exit 1
	fi
	val="$def"
	if [ "${!var:-}" ]; then
		val="${!var}"
	elif [ "${!fileVar:-}" ]; then
		val="$(< "${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

# psql_init runs psql against the temporary server, over its socket, as POSTGRES_USER.
psql_init() {
	PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

init_database() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		printf >&2 '%s\n' \
			'Error: Database is uninitialized and superuser password is not specified.' \
			'       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value for the superuser,' \
			'       or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password.'
		exit 1
	fi
	local args=(--username="$POSTGRES_USER" --locale=C --encoding=UTF8 --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD")
	# POSTGRES_INITDB_ARGS is a list of arguments, as upstream (unquoted on purpose). The password reaches
	# initdb through a pipe from the printf builtin: it is on no command line.
	if [ -n "$POSTGRES_PASSWORD" ]; then
		initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS -D "$PGDATA"
	else
		initdb "${args[@]}" $POSTGRES_INITDB_ARGS -D "$PGDATA"
	fi
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start

	if [ "$POSTGRES_DB" != postgres ]; then
		local exists
		exists="$(psql_init --dbname postgres --set db="$POSTGRES_DB" --tuples-only --no-align <<< "SELECT 1 FROM pg_database WHERE datname = :'db';")"
		if [ -z "$exists" ]; then
			psql_init --dbname postgres --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
		fi
	fi

	local f
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
		*.sh)
			if [ -x "$f" ]; then
				printf '%s: running %s\n' "$0" "$f"
				"$f"
			else
				printf '%s: sourcing %s\n' "$0" "$f"
				. "$f"
			fi
			;;
		*.sql)
			printf '%s: running %s\n' "$0" "$f"
			psql_init --dbname "$POSTGRES_DB" -f "$f"
			;;
		*) printf '%s: ignoring %s\n' "$0" "$f" ;;
		esac
	done

	pg_ctl -D "$PGDATA" -m fast -w stop
	printf '\nPostgreSQL init process complete; ready for start up.\n\n'
}

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

# want_help: postgres only prints something and exits (as upstream: no initialisation for these).
want_help() {
	local arg
	for arg; do
		case "$arg" in
		-'?' | --help | --describe-config | -V | --version) return 0 ;;
		esac
	done
	return 1
}

if [ "$1" = postgres ] && ! want_help "$@"; then
	export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
	file_env POSTGRES_USER postgres
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	export POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	# The password stays a variable of this shell (sourced init scripts see it); no child process gets it.
	export -n POSTGRES_PASSWORD
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		init_database
	else
		printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
	fi
	unset POSTGRES_PASSWORD
fi

exec "$@"
`
