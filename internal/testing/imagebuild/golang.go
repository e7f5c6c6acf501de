package imagebuild

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// GoDebian assembles a Go toolchain image, the stand-in of the golang image the repository's Dockerfiles
// build FROM (their GO_IMAGE argument), from this machine: its Go installation (go env GOROOT, without
// tests, documentation and test data) at /usr/local/go, Debian's dash as /bin/sh, the few coreutils a build
// stage runs (mkdir, chown, chmod, cp, ls, cat), the CA certificates, and root's passwd entry. Like the
// golang image it sets GOPATH=/go and PATH; GOPROXY and GOSUMDB are this machine's (a build downloads
// modules from the same proxy), GOTOOLCHAIN=local.
func GoDebian() (v1.Image, error) {
	env, err := exec.Command("go", "env", "GOROOT", "GOPROXY", "GOSUMDB", "GOVERSION").Output()
	if err != nil {
		return nil, fmt.Errorf("go env: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(env)), "\n")
	if len(lines) != 4 {
		return nil, fmt.Errorf("go env: unexpected output %q", env)
	}
	goroot, proxy, sumdb, version := lines[0], lines[1], lines[2], lines[3]
	var files []file
	err = filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(goroot, p)
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir() && (rel == "test" || rel == "doc" || rel == "api" || rel == "misc" || d.Name() == "testdata"):
			return filepath.SkipDir
		case d.IsDir():
			return nil
		case strings.HasSuffix(rel, "_test.go"):
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		f := file{Path: "/usr/local/go/" + rel, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSymlink)}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			f.Data = []byte(target)
		} else if !fi.Mode().IsRegular() {
			return nil
		} else if f.Data, err = os.ReadFile(p); err != nil {
			return err
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("go toolchain %s: %w", goroot, err)
	}
	files = append(files,
		file{Path: "/bin/sh", Mode: fs.ModeSymlink | 0o777, Data: []byte("/bin/dash")},
		file{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")},
		file{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		file{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		file{Path: "/root", Mode: fs.ModeDir | 0o700},
		file{Path: "/go", Mode: fs.ModeDir | 0o777},
	)
	d := debianImage{
		Paths: []string{"/bin/dash", "/bin/mkdir", "/bin/chown", "/bin/chmod", "/bin/cp", "/bin/ls", "/bin/cat",
			"/etc/ssl/certs/ca-certificates.crt"},
		Files: files,
		Config: v1.Config{
			Env: []string{
				"PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"GOPATH=/go", "GOTOOLCHAIN=local", "GOPROXY=" + proxy, "GOSUMDB=" + sumdb,
				"GOLANG_VERSION=" + strings.TrimPrefix(version, "go"),
			},
			WorkingDir: "/go",
			Cmd:        []string{"/bin/sh"},
		},
	}
	img, err := d.build()
	if err != nil {
		return nil, fmt.Errorf("go toolchain image: %w", err)
	}
	return img, nil
}
