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
	"reflect"
	"sync"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/stack"
)

// MemoLoader keeps, in memory, the last stack its Loader made for each stack name, and returns a copy of it
// while every input of the load is unchanged: the daemon loads the same release every cycle, and compose-go's
// load is most of a no-op cycle's CPU time.
//
// The key is a SHA-256 of every option (files, stack, environment values, profiles, directories, limits,
// the environment label, the name key, strict) and of the path and content of every file under Options.Root,
// the release directory: a confined load reads nothing outside it (internal/compose), so the key covers every
// file the load may read. A load that is not confined (Root empty) or that reports interpolated values
// (Options.Interpolated) is never memoized. A failed load is not kept. Nothing is written anywhere: the
// stack holds secret values, and stays in this process's memory.
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
	if o.Root == "" || o.Interpolated != nil {
		return m.Loader.Load(ctx, o)
	}
	key, err := memoKey(o)
	if err != nil {
		// The loader reports the unreadable file in its own words.
		return m.Loader.Load(ctx, o)
	}
	m.mu.Lock()
	e, ok := m.last[o.Stack]
	if ok && e.key == key {
		m.hits++
		m.mu.Unlock()
		return cloneStack(e.st), nil
	}
	m.misses++
	m.mu.Unlock()
	st, err := m.Loader.Load(ctx, o)
	if err != nil {
		return st, err
	}
	m.mu.Lock()
	if m.last == nil {
		m.last = map[string]memoEntry{}
	}
	m.last[o.Stack] = memoEntry{key: key, st: cloneStack(st)}
	m.mu.Unlock()
	return st, nil
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

// cloneStack copies a stack deeply (the flow changes the stack it is given: verify pins images).
func cloneStack(st *stack.Stack) *stack.Stack {
	if st == nil {
		return nil
	}
	return deepCopy(reflect.ValueOf(st)).Interface().(*stack.Stack)
}

// deepCopy copies v: pointers, slices, maps and interfaces anew (nil stays nil, empty stays empty), structs
// field by field (unexported fields are copied as they are: time.Time's location, say).
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.New(v.Type().Elem())
		n.Elem().Set(deepCopy(v.Elem()))
		return n
	case reflect.Interface:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.New(v.Type()).Elem()
		n.Set(deepCopy(v.Elem()))
		return n
	case reflect.Slice:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		if plain(v.Type().Elem()) {
			reflect.Copy(n, v)
			return n
		}
		for i := range v.Len() {
			n.Index(i).Set(deepCopy(v.Index(i)))
		}
		return n
	case reflect.Array:
		n := reflect.New(v.Type()).Elem()
		n.Set(v)
		if !plain(v.Type().Elem()) {
			for i := range v.Len() {
				n.Index(i).Set(deepCopy(v.Index(i)))
			}
		}
		return n
	case reflect.Map:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			n.SetMapIndex(it.Key(), deepCopy(it.Value()))
		}
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		n.Set(v)
		for i := range v.NumField() {
			if f := n.Field(i); f.CanSet() && !plain(f.Type()) {
				f.Set(deepCopy(v.Field(i)))
			}
		}
		return n
	}
	return v
}

// plain reports whether values of t hold no reference (copying them copies everything).
func plain(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128, reflect.String:
		return true
	}
	return false
}
