package compose

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"

	"github.com/sabeiro/sawmill/internal/stack"
)

// LoadCached is Load with an on-disk cache in dir: for the commands that judge specs and never values
// (`agent check` and `agent render`: Options.WithoutValues, no NameKey), and for `agent apply` (a NameKey, the
// swarm's). A cached stack never holds a value from outside the compose files, so only loads to which the
// environment contributed nothing are kept:
//
//   - the load is refused the cache (loaded, and not kept) when it needs values and has no NameKey; when a
//     `.env` file is in the working directory; when the compose files use include, extends, env_file or
//     label_file (files the key would not cover); when the environment holds any variable whose name is a
//     word of the compose files (interpolation, a bare `environment:` key or a secret's `environment:` could
//     take its value) or any COMPOSE_* variable; and, after loading, when a variable supplied a value;
//   - secret and config contents are never kept: a cached stack's objects have no Data (a caller that must
//     create one loads again: cmd/agent's apply does). Without a NameKey an entry records whether each of its
//     secret and config files could be read (the names do not depend on the contents); with one, an HMAC of
//     each file's content keyed with the NameKey, which must still match;
//   - the key is a SHA-256 (with a NameKey, an HMAC-SHA-256 keyed with it, so that nothing on disk can be
//     checked against a guessed content without the swarm's key) of the agent binary's identity, every option,
//     and the path and content of every compose file.
//
// Entries are JSON files (0600) in dir (made 0700). hit reports whether the stack came from the cache. An
// unreadable or stale entry is a miss; an entry that cannot be written is no error.
func LoadCached(ctx context.Context, o Options, dir string) (st *stack.Stack, hit bool, err error) {
	key, ok := cacheKey(o, dir)
	if !ok {
		go Prepare() // the schema compiles while the files are read and parsed
		st, err = Load(ctx, o)
		return st, false, err
	}
	path := filepath.Join(dir, key+".json")
	if st, ok := readEntry(path, o.NameKey); ok {
		return st, true, nil
	}
	go Prepare() // a miss loads: compile the schema meanwhile (a hit never needs it)
	supplied := false
	inner := o.Interpolated
	o.Interpolated = func(v string) {
		supplied = true
		if inner != nil {
			inner(v)
		}
	}
	st, project, err := loadProject(ctx, o)
	if err != nil || supplied {
		return st, false, err
	}
	e := cacheEntry{Version: cacheVersion, Stack: st}
	var files []string
	for _, x := range project.Secrets {
		files = append(files, x.File)
	}
	for _, x := range project.Configs {
		files = append(files, x.File)
	}
	slices.Sort(files)
	for _, f := range files {
		if f != "" {
			e.Files = append(e.Files, cacheFile{Path: f, Readable: readable(f), Digest: fileDigest(o.NameKey, f)})
		}
	}
	// What is kept has no value: the objects' contents stay out (Data is never marshalled; clear it anyway).
	kept := *st
	kept.Secrets, kept.Configs = withoutData(st.Secrets), withoutData(st.Configs)
	e.Stack = &kept
	writeEntry(dir, path, &e)
	return st, false, nil
}

const cacheVersion = 1

type cacheEntry struct {
	Version int          `json:"version"`
	Files   []cacheFile  `json:"files"`
	Stack   *stack.Stack `json:"stack"` // stack.Object.Data is never marshalled
}

type cacheFile struct {
	Path     string `json:"path"`
	Readable bool   `json:"readable"`
	// Digest is an HMAC of the content keyed with the NameKey (loads with one), else empty.
	Digest string `json:"digest,omitempty"`
}

func withoutData(objs []stack.Object) []stack.Object {
	out := make([]stack.Object, len(objs))
	for i, o := range objs {
		o.Data = nil
		out[i] = o
	}
	return out
}

// fileDigest is an HMAC-SHA-256 of the file's content keyed with nameKey ("" without a key or a file).
func fileDigest(nameKey []byte, path string) string {
	if nameKey == nil {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	m := hmac.New(sha256.New, nameKey)
	m.Write(b)
	return hex.EncodeToString(m.Sum(nil))
}

func readable(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func readEntry(path string, nameKey []byte) (*stack.Stack, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	var e cacheEntry
	if err := json.Unmarshal(b, &e); err != nil || e.Version != cacheVersion || e.Stack == nil {
		return nil, false
	}
	for _, f := range e.Files {
		if readable(f.Path) != f.Readable || fileDigest(nameKey, f.Path) != f.Digest {
			return nil, false
		}
	}
	return e.Stack, true
}

func writeEntry(dir, path string, e *cacheEntry) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	WriteCacheFile(dir, path, b)
}

// CacheFile is the path in dir of the file prefix-<key>.json, the key an HMAC-SHA-256 (keyed with nameKey)
// of the agent's build, as LoadCached's keys name it, and of name: for what a command keeps in its cache
// directory beside the loaded stacks, never read by another build.
func CacheFile(dir, prefix string, nameKey []byte, name string) string {
	m := hmac.New(sha256.New, nameKey)
	for _, s := range []string{prefix, binaryIdentity(), name} {
		_ = binary.Write(m, binary.LittleEndian, uint64(len(s)))
		io.WriteString(m, s)
	}
	return filepath.Join(dir, prefix+"-"+hex.EncodeToString(m.Sum(nil))+".json")
}

// WriteCacheFile replaces path in dir with b (0600; dir made 0700) through a temporary file and a rename. A
// file that cannot be written is no error: it is a cache.
func WriteCacheFile(dir, path string, b []byte) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".entry-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), path) != nil {
		os.Remove(tmp.Name())
	}
}

// refused are the words that make a load depend on files the key does not cover.
var refused = map[string]bool{"include": true, "extends": true, "env_file": true, "label_file": true}

// cacheKey returns the entry's key, or false when the load may not use the cache.
func cacheKey(o Options, dir string) (string, bool) {
	if dir == "" || (o.NameKey == nil && !o.WithoutValues) || len(o.Files) == 0 {
		return "", false
	}
	workDir := o.WorkDir
	if workDir == "" {
		workDir = filepath.Dir(o.Files[0])
	}
	workDir, err := filepath.Abs(workDir)
	if err != nil {
		return "", false
	}
	if _, err := os.Lstat(filepath.Join(workDir, ".env")); err == nil {
		return "", false
	}
	// The words that refuse the cache when a compose file spells them: refused, and the environment's names.
	refuse := maps.Clone(refused)
	for _, kv := range o.Env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "COMPOSE_") {
			return "", false
		}
		refuse[name] = true
	}
	h := sha256.New()
	if o.NameKey != nil {
		h = hmac.New(sha256.New, o.NameKey)
	}
	field := func(b []byte) {
		_ = binary.Write(h, binary.LittleEndian, uint64(len(b)))
		h.Write(b)
	}
	str := func(s string) { field([]byte(s)) }
	str(fmt.Sprintf("sawmill compose cache v%d", cacheVersion))
	str(binaryIdentity())
	for _, f := range o.Files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return "", false
		}
		b, err := os.ReadFile(abs)
		if err != nil {
			return "", false // Load says what is wrong
		}
		if !eachWord(b, func(w []byte) bool { return !refuse[string(w)] }) {
			return "", false
		}
		str("file:" + abs)
		field(b)
	}
	optionsHash(h, o, workDir, str)
	return hex.EncodeToString(h.Sum(nil)), true
}

// eachWord calls fn with every word of b, as the regular expression [A-Za-z_][A-Za-z0-9_]* finds them from
// left to right, until fn returns false; it reports whether every call returned true.
func eachWord(b []byte, fn func(w []byte) bool) bool {
	for i := 0; i < len(b); {
		if c := b[i]; c != '_' && (c|0x20 < 'a' || c|0x20 > 'z') {
			i++
			continue
		}
		j := i + 1
		for j < len(b) && wordByte(b[j]) {
			j++
		}
		if !fn(b[i:j]) {
			return false
		}
		i = j
	}
	return true
}

func wordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z'
}

func optionsHash(h hash.Hash, o Options, workDir string, str func(string)) {
	str("stack:" + o.Stack)
	str("workdir:" + workDir)
	str("root:" + o.Root)
	str("environment:" + o.Environment)
	str(fmt.Sprintf("profiles:%q limits:%d/%d strict:%t without-values:%t name-key:%t", o.Profiles, o.MaxFileBytes, o.MaxTotalBytes, o.Strict, o.WithoutValues, o.NameKey != nil))
}

// binaryIdentity names the running agent's build, so that a new conversion never reads an old one's entry:
// its VCS revision and time when built from a clean checkout, else also the executable's size and time.
var binaryIdentity = sync.OnceValue(func() string {
	var id strings.Builder
	clean := false
	if bi, ok := debug.ReadBuildInfo(); ok {
		id.WriteString(bi.Main.Path + "@" + bi.Main.Version + " " + bi.GoVersion)
		revision, modified := false, false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision", "vcs.time":
				id.WriteString(" " + s.Value)
				revision = revision || s.Key == "vcs.revision"
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		clean = !modified && (revision || (bi.Main.Version != "" && bi.Main.Version != "(devel)"))
	}
	if !clean {
		if exe, err := os.Executable(); err == nil {
			if fi, err := os.Stat(exe); err == nil {
				fmt.Fprintf(&id, " %s %d %d", exe, fi.Size(), fi.ModTime().UnixNano())
			}
		}
	}
	return id.String()
})
