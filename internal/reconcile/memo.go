package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/stack"
)

// MemoLoader keeps, in memory, the last stack its Loader made for each stack name, and returns that same
// stack while every input of the load is unchanged: the daemon loads the same release every cycle, and
// compose-go's load is most of a no-op cycle's CPU time. The stack it returns is shared between cycles:
// nobody may change it (the flow does not: verify pins images into a copy).
//
// The key is a SHA-256 of every option (files, stack, environment values, profiles, directories, limits,
// the environment label, the name key, strict) and of the path and content of every file under Options.Root,
// the release directory: a confined load reads nothing outside it (internal/compose), so the key covers every
// file the load may read. A load that is not confined (Root empty) or that reports interpolated values
// (Options.Interpolated) is never memoized. A failed load is not kept, nor one whose files changed while it
// read them (the key is taken before and after). Nothing is written anywhere: the stack holds secret values,
// and stays in this process's memory.
type MemoLoader struct {
	Loader Loader

	mu     sync.Mutex
	last   map[string]memoEntry
	hits   int
	misses int
}

type memoEntry struct {
	key [sha256.Size]byte
	st  *stack.Stack
}

// Load returns the memoized stack when the inputs are those of the last load of o.Stack, else loads.
func (m *MemoLoader) Load(ctx context.Context, o compose.Options) (*stack.Stack, error) {
	st, _, err := m.LoadKeyed(ctx, o)
	return st, err
}

// LoadKeyed is Load, and names what it loaded: the key of its inputs, the same key for the same stack;
// the zero key when the load is not memoized.
func (m *MemoLoader) LoadKeyed(ctx context.Context, o compose.Options) (*stack.Stack, [sha256.Size]byte, error) {
	var none [sha256.Size]byte
	if o.Root == "" || o.Interpolated != nil {
		st, err := m.Loader.Load(ctx, o)
		return st, none, err
	}
	key, err := memoKey(o)
	if err != nil {
		// The loader reports the unreadable file in its own words.
		st, err := m.Loader.Load(ctx, o)
		return st, none, err
	}
	m.mu.Lock()
	e, ok := m.last[o.Stack]
	if ok && e.key == key {
		m.hits++
		m.mu.Unlock()
		return e.st, key, nil
	}
	m.misses++
	m.mu.Unlock()
	st, err := m.Loader.Load(ctx, o)
	if err != nil {
		return st, none, err
	}
	if after, err := memoKey(o); err != nil || after != key {
		return st, none, nil // the release changed under the load: this stack has no name
	}
	m.mu.Lock()
	if m.last == nil {
		m.last = map[string]memoEntry{}
	}
	m.last[o.Stack] = memoEntry{key: key, st: st}
	m.mu.Unlock()
	return st, key, nil
}

// Stats returns how many loads were answered from memory (hits) and by the loader (misses).
func (m *MemoLoader) Stats() (hits, misses int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hits, m.misses
}

// memoKey hashes every input of a confined load.
func memoKey(o compose.Options) ([sha256.Size]byte, error) {
	h := sha256.New()
	str := func(s string) {
		_ = binary.Write(h, binary.LittleEndian, uint64(len(s)))
		io.WriteString(h, s)
	}
	list := func(tag string, l []string) {
		str(tag)
		_ = binary.Write(h, binary.LittleEndian, uint64(len(l)))
		for _, s := range l {
			str(s)
		}
	}
	list("files", o.Files)
	list("env", o.Env)
	list("profiles", o.Profiles)
	str("stack:" + o.Stack)
	str("workdir:" + o.WorkDir)
	str("root:" + o.Root)
	str("environment:" + o.Environment)
	str("namekey:" + string(o.NameKey))
	str(fmt.Sprintf("limits:%d/%d strict:%t novalues:%t", o.MaxFileBytes, o.MaxTotalBytes, o.Strict, o.WithoutValues))
	str(fmt.Sprintf("sops:%t", o.SOPS != nil))
	var sum [sha256.Size]byte
	if err := hashTree(h, o.Root); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// hashTree hashes the path, mode and content of every file under root, in lexical order (links followed
// for files; a linked directory is hashed where it really is, inside root, as a confined load requires).
func hashTree(h hash.Hash, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		b, err := os.ReadFile(p)
		if err != nil {
			if d.Type()&fs.ModeSymlink != 0 {
				// a dangling or directory link: its target is what matters, and is walked where it is
				fmt.Fprintf(h, "link %q\n", rel)
				return nil
			}
			return err
		}
		fmt.Fprintf(h, "file %q %d\n", rel, len(b))
		h.Write(b)
		return nil
	})
}
