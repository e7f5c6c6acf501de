package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// excludeDocs drops documentation, manual pages and translations.
func excludeDocs(p string) bool {
	for _, dir := range []string{"/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/lintian/", "/usr/share/locale/", "/usr/share/bug/"} {
		if strings.HasPrefix(p, dir) {
			return true
		}
	}
	return false
}

// debianImage is a one-layer image of files installed on this machine: the files of Debian packages, further
// host files, the shared libraries and dynamic loader their ELF files need (ldd), and files written for the
// image. Host paths that go through symbolic links (/bin -> usr/bin on a merged-/usr system) are copied with
// those links. Every entry is owned by root unless written otherwise, with mtime 0, in sorted order.
type debianImage struct {
	Packages []string          // their files, as `dpkg -L` lists them
	Exclude  func(string) bool // drops package files by path
	Paths    []string          // further host files and directories
	Files    []file            // written for the image; they replace host files of the same path
	Config   v1.Config         // Architecture and OS are set
}

// file is an entry written for the image. Mode holds the permission bits (with setuid, setgid, sticky) and
// fs.ModeDir or fs.ModeSymlink; Data is a regular file's content or a link's target.
type file struct {
	Path     string
	Mode     fs.FileMode
	UID, GID int
	Data     []byte
}

// entry is a file of the image: written data, or a host file read when the layer is written.
type entry struct {
	file
	host string
}

type layout struct {
	entries map[string]*entry // by clean absolute path
	elfs    []string          // dynamically linked host files, for ldd
}

func (d debianImage) build() (v1.Image, error) {
	l := &layout{entries: map[string]*entry{}}
	for _, pkg := range d.Packages {
		files, err := packageFiles(pkg)
		if err != nil {
			return nil, err
		}
		for _, p := range files {
			if d.Exclude != nil && d.Exclude(p) {
				continue
			}
			fi, err := os.Lstat(p)
			if errors.Is(err, fs.ErrNotExist) || (err == nil && fi.IsDir()) {
				continue // directories come with their files; a file may have been removed by hand
			}
			if err := l.addHost(p, true); err != nil {
				return nil, fmt.Errorf("package %s: %w", pkg, err)
			}
		}
	}
	for _, p := range d.Paths {
		// A directory comes with everything in it.
		err := filepath.WalkDir(p, func(p string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			return l.addHost(p, false)
		})
		if err != nil {
			return nil, err
		}
	}
	libs, err := ldd(l.elfs)
	if err != nil {
		return nil, err
	}
	for _, p := range libs {
		if err := l.addHost(p, false); err != nil {
			return nil, err
		}
	}
	for _, f := range d.Files {
		p := l.canon(f.Path)
		l.mkdirs(path.Dir(p))
		f.Path = p
		l.entries[p] = &entry{file: f}
	}

	data, err := l.layer()
	if err != nil {
		return nil, err
	}
	return oneLayer(data, d.Config)
}

// packageFiles lists an installed Debian package's files.
func packageFiles(pkg string) ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("dpkg", "-L", pkg)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg -L %s (apt-get install %s): %w: %s", pkg, pkg, err, strings.TrimSpace(stderr.String()))
	}
	var files []string
	for _, line := range strings.Split(string(out), "\n") {
		// Other lines say "diverted by ..." or "package diverts others to: ...".
		if p := path.Clean(line); strings.HasPrefix(line, "/") && p != "/" {
			files = append(files, p)
		}
	}
	return files, nil
}

// addHost adds the host file p, the directories above it, and every symbolic link on the way (in the path or
// as the file itself) together with what it points to. A link that points nowhere is kept when tolerateDangling.
func (l *layout) addHost(p string, tolerateDangling bool) error {
	return l.addHostDepth(p, tolerateDangling, 0)
}

func (l *layout) addHostDepth(p string, tolerateDangling bool, depth int) error {
	if depth > 40 {
		return fmt.Errorf("%s: too many levels of symbolic links", p)
	}
	parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	cur := "/"
	for i, part := range parts {
		cur = path.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err != nil {
			if depth > 0 && tolerateDangling && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(cur)
			if err != nil {
				return err
			}
			if _, ok := l.entries[cur]; !ok {
				l.entries[cur] = &entry{file: file{Path: cur, Mode: fs.ModeSymlink | 0o777, Data: []byte(target)}}
			}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(cur), target)
			}
			return l.addHostDepth(path.Join(append([]string{target}, parts[i+1:]...)...), tolerateDangling, depth+1)
		case fi.IsDir():
			if _, ok := l.entries[cur]; !ok {
				l.entries[cur] = &entry{file: file{Path: cur, Mode: fs.ModeDir | 0o755}}
			}
		case fi.Mode().IsRegular() && i == len(parts)-1:
			if _, ok := l.entries[cur]; ok {
				return nil
			}
			l.entries[cur] = &entry{file: file{Path: cur, Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}, host: cur}
			dyn, err := isDynamicELF(cur)
			if err != nil {
				return err
			}
			if dyn {
				l.elfs = append(l.elfs, cur)
			}
		default:
			return fmt.Errorf("%s: %s is not a regular file, directory or symbolic link", p, cur)
		}
	}
	return nil
}

// isDynamicELF reports whether p is an ELF file with dynamic linking information.
func isDynamicELF(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != elf.ELFMAG {
		return false, nil
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return false, fmt.Errorf("%s: %w", p, err)
	}
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_DYNAMIC {
			return true, nil
		}
	}
	return false, nil
}

// ldd returns the shared libraries (and the dynamic loader) that the ELF files need, as ldd resolves them. The
// files are split among a few ldd processes that run at the same time.
func ldd(files []string) ([]string, error) {
	n := min(runtime.NumCPU(), 8, len(files))
	outs, errs := make([][]byte, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var chunk []string
			for j := i; j < len(files); j += n {
				chunk = append(chunk, files[j])
			}
			var stderr bytes.Buffer
			cmd := exec.Command("ldd", chunk...)
			cmd.Env = append(os.Environ(), "LC_ALL=C")
			cmd.Stderr = &stderr
			if outs[i], errs[i] = cmd.Output(); errs[i] != nil {
				errs[i] = fmt.Errorf("ldd: %w: %s", errs[i], strings.TrimSpace(stderr.String()))
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var libs []string
	for _, out := range outs {
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(line, "\t") {
				continue // "<file>:" heading
			}
			line = strings.TrimSpace(line)
			// "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
			// "linux-vdso.so.1 (0x...)", "libfoo.so.1 => not found"
			if _, right, ok := strings.Cut(line, "=>"); ok {
				line = strings.TrimSpace(right)
				if strings.HasPrefix(line, "not found") {
					return nil, fmt.Errorf("ldd: a shared library is missing on this machine: %s", strings.TrimSpace(string(out)))
				}
			}
			p, _, _ := strings.Cut(line, " ")
			if strings.HasPrefix(p, "/") && !seen[p] {
				seen[p] = true
				libs = append(libs, p)
			}
		}
	}
	sort.Strings(libs)
	return libs, nil
}

// canon resolves the symbolic links of the image that p's directories go through.
func (l *layout) canon(p string) string {
	parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
	cur := "/"
	for i, part := range parts[:len(parts)-1] {
		cur = path.Join(cur, part)
		if e, ok := l.entries[cur]; ok && e.Mode&fs.ModeSymlink != 0 {
			target := string(e.Data)
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(cur), target)
			}
			return l.canon(path.Join(append([]string{target}, parts[i+1:]...)...))
		}
	}
	return path.Clean(p)
}

// mkdirs adds the directories of dir that the image lacks.
func (l *layout) mkdirs(dir string) {
	for ; dir != "/"; dir = path.Dir(dir) {
		if _, ok := l.entries[dir]; !ok {
			l.entries[dir] = &entry{file: file{Path: dir, Mode: fs.ModeDir | 0o755}}
		}
	}
}

// layer writes the entries as a gzipped tar, in path order, with fixed times.
func (l *layout) layer() ([]byte, error) {
	paths := make([]string, 0, len(l.entries))
	for p := range l.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var size int64
	for _, e := range l.entries {
		if e.host != "" {
			if fi, err := os.Stat(e.host); err == nil {
				size += fi.Size()
			}
		}
	}
	var buf bytes.Buffer
	buf.Grow(int(size / 2)) // about what gzip leaves of shared libraries and binaries
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	for _, p := range paths {
		e := l.entries[p]
		h := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    int64(e.Mode.Perm()),
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: time.Unix(0, 0),
			Format:  tar.FormatPAX,
		}
		if e.Mode&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if e.Mode&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		data := e.Data
		switch {
		case e.Mode&fs.ModeDir != 0:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.Mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, string(e.Data)
		default:
			h.Typeflag = tar.TypeReg
			if e.host != "" {
				if data, err = os.ReadFile(e.host); err != nil {
					return nil, err
				}
			}
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(data); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
