package imagebuild

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// LivePyDebian assembles the live_py image (images/live_py) from the Debian packages installed on this machine
// and the app in appDir: Debian's python3 (the interpreter and standard library of the version /usr/bin/python3
// names: python3.11-minimal, libpython3.11-minimal and libpython3.11-stdlib on bookworm), python3-psycopg2 and
// the shared libraries all of them need (libpq5, OpenSSL, ...), with appDir's live.py and static/ in /app.
//
// The configuration is the Dockerfile's: PYTHONDONTWRITEBYTECODE=1, PYTHONUNBUFFERED=1, LIVE_LISTEN=:8080,
// WORKDIR /app, USER 65534:65534, EXPOSE 8080, its HEALTHCHECK (`python /app/live.py --healthcheck`),
// STOPSIGNAL SIGTERM, ENTRYPOINT ["python3", "/app/live.py"]; /usr/bin/python and /usr/bin/python3 are on
// PATH. Left out of the standard library: the test package and test extension modules, the development
// tools (idlelib, tkinter, turtledemo, ensurepip, venv, lib2to3, pydoc_data), and the extension modules that
// would bring in further libraries a web service does not use (curses, readline, dbm's ndbm, sqlite3, nis,
// ossaudiodev); no __pycache__ and no documentation. The same installed files and app files give the same
// digest. Without python3 or python3-psycopg2 installed, the error says to install them.
func LivePyDebian(appDir string) (v1.Image, error) {
	const install = "apt-get install python3 python3-psycopg2"
	// /usr/bin/python3 -> python3.11: the version whose packages make the interpreter.
	target, err := os.Readlink("/usr/bin/python3")
	if err != nil {
		return nil, fmt.Errorf("no Debian python3 on this machine (%v): %s", err, install)
	}
	ver := path.Base(target) // python3.11
	if !regexp.MustCompile(`^python3\.[0-9]+$`).MatchString(ver) {
		return nil, fmt.Errorf("/usr/bin/python3 points to %s, not to a Debian python3.N interpreter", target)
	}
	if _, err := packageFiles("python3-psycopg2"); err != nil {
		return nil, fmt.Errorf("python3-psycopg2 is not installed on this machine: %s", install)
	}
	app, err := appFiles(appDir)
	if err != nil {
		return nil, err
	}

	stdlib := "/usr/lib/" + ver + "/"
	dropped := []string{
		// tests, development tools, and modules that need libraries the image should not carry
		"test/", "idlelib/", "tkinter/", "turtledemo/", "ensurepip/", "venv/", "lib2to3/", "pydoc_data/",
		"__phello__/", "turtle.py", "curses/", "sqlite3/",
		"lib-dynload/_test", "lib-dynload/_ctypes_test.", "lib-dynload/_xxtestfuzz.", "lib-dynload/xxlimited",
		"lib-dynload/_curses", "lib-dynload/readline.", "lib-dynload/_dbm.", "lib-dynload/_gdbm.",
		"lib-dynload/_sqlite3.", "lib-dynload/nis.", "lib-dynload/ossaudiodev.",
	}
	files := append(app,
		file{Path: "/usr/bin/python", Mode: fs.ModeSymlink | 0o777, Data: []byte("python3")},
		file{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")},
		file{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		file{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("passwd: files\ngroup: files\nhosts: files dns\n")},
		file{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	)
	d := debianImage{
		Packages: []string{ver + "-minimal", "lib" + ver + "-minimal", "lib" + ver + "-stdlib", "python3-psycopg2"},
		Exclude: func(p string) bool {
			if excludeDocs(p) || strings.Contains(p, "/__pycache__/") || strings.HasPrefix(p, "/usr/share/lintian/") ||
				strings.HasPrefix(p, "/usr/lib/binfmt.d/") || strings.HasPrefix(p, "/usr/share/binfmts/") {
				return true
			}
			for _, x := range dropped {
				if strings.HasPrefix(p, stdlib+x) {
					return true
				}
			}
			return false
		},
		// /usr/bin/python3 (of python3-minimal) is the link to the interpreter. Python coerces the C locale
		// to C.UTF-8, as the python image's LANG does.
		Paths: []string{"/usr/bin/python3", "/usr/lib/locale/C.utf8"},
		Files: files,
		Config: v1.Config{
			Entrypoint: []string{"python3", "/app/live.py"},
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"LANG=C.UTF-8",
				"PYTHONDONTWRITEBYTECODE=1",
				"PYTHONUNBUFFERED=1",
				"LIVE_LISTEN=:8080",
			},
			WorkingDir:   "/app",
			User:         "65534:65534",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
			Healthcheck: &v1.HealthConfig{
				Test:     []string{"CMD", "python", "/app/live.py", "--healthcheck"},
				Interval: 10 * time.Second, Timeout: 5 * time.Second, StartPeriod: 10 * time.Second, Retries: 3,
			},
			StopSignal: "SIGTERM",
			Labels: map[string]string{
				"org.opencontainers.image.title":       "live_py",
				"org.opencontainers.image.description": "Live view of the platform's ingest activity (HTML + Server-Sent Events)",
				"org.opencontainers.image.source":      "https://github.com/sabeiro/sawmill",
			},
		},
	}
	img, err := d.build()
	if err != nil {
		return nil, fmt.Errorf("live_py image (%s): %w", ver, err)
	}
	return img, nil
}

// appFiles reads appDir's live.py and static/ as the image's /app/live.py and /app/static/, files 0644.
func appFiles(appDir string) ([]file, error) {
	live, err := os.ReadFile(filepath.Join(appDir, "live.py"))
	if err != nil {
		return nil, fmt.Errorf("live_py app: %w", err)
	}
	files := []file{{Path: "/app/live.py", Mode: 0o644, Data: live}}
	static := filepath.Join(appDir, "static")
	err = filepath.WalkDir(static, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		if !de.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(static, p)
		if err != nil {
			return err
		}
		files = append(files, file{Path: "/app/static/" + filepath.ToSlash(rel), Mode: 0o644, Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("live_py app: %w", err)
	}
	return files, nil
}
