// Package allowlist is go_ingest's table/column allow-list: the only source of SQL identifiers.
//
// In: a JSON document (file) or a compact string (environment). Out: a List that maps the table name used in
// the URL to the configured PostgreSQL table and its allowed columns. Request text is only ever used as a
// lookup key here; the identifiers that reach SQL are the configured strings. Imports only the standard library.
package allowlist

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
)

// Table is one allow-listed table.
type Table struct {
	// Name is the name used in the URL (/v1/ingest/{Name}).
	Name string `json:"-"`
	// Schema and Table name the PostgreSQL table; Schema may be empty (search_path applies).
	Schema string `json:"schema,omitempty"`
	Table  string `json:"table,omitempty"`
	// Columns are the columns a record may set, in configuration order.
	Columns []string `json:"columns"`

	allowed map[string]string
}

// Column returns the configured column for a record key and whether it is allowed.
func (t *Table) Column(key string) (string, bool) {
	c, ok := t.allowed[key]
	return c, ok
}

// Identifier returns the table's qualified name parts (for pgx.Identifier).
func (t *Table) Identifier() []string {
	if t.Schema != "" {
		return []string{t.Schema, t.Table}
	}
	return []string{t.Table}
}

// List is the whole allow-list, keyed by URL name.
type List struct {
	tables map[string]*Table
}

// Lookup returns the table for a URL name.
func (l *List) Lookup(name string) (*Table, bool) {
	t, ok := l.tables[name]
	return t, ok
}

// Names returns the URL names, sorted.
func (l *List) Names() []string {
	names := make([]string, 0, len(l.tables))
	for n := range l.tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// identifiers in the configuration are plain PostgreSQL names. They are quoted anyway when used; this check
// only catches configuration mistakes early.
var ident = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// Parse reads the JSON form:
//
//	{"tables": {"events": {"schema": "public", "table": "events", "columns": ["source", "kind", "payload"]}}}
//
// "table" defaults to the key.
func Parse(data []byte) (*List, error) {
	var doc struct {
		Tables map[string]*Table `json:"tables"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("allow-list: %w", err)
	}
	return build(doc.Tables)
}

// ParseCompact reads the environment form: "events=source,kind,payload;metrics=public.metrics:name,value".
// Each entry is name=columns or name=[schema.]table:columns.
func ParseCompact(s string) (*List, error) {
	tables := map[string]*Table{}
	for _, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, rest, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("allow-list: entry %q: want name=columns", entry)
		}
		t := &Table{}
		if target, cols, ok := strings.Cut(rest, ":"); ok {
			if schema, table, ok := strings.Cut(target, "."); ok {
				if schema == "" || table == "" {
					return nil, fmt.Errorf("allow-list: entry %q: want schema.table", entry)
				}
				t.Schema, t.Table = schema, table
			} else {
				if target == "" {
					return nil, fmt.Errorf("allow-list: entry %q: empty table", entry)
				}
				t.Table = target
			}
			rest = cols
		}
		for _, c := range strings.Split(rest, ",") {
			if c = strings.TrimSpace(c); c != "" {
				t.Columns = append(t.Columns, c)
			}
		}
		name = strings.TrimSpace(name)
		if _, dup := tables[name]; dup {
			return nil, fmt.Errorf("allow-list: table %q listed twice", name)
		}
		tables[name] = t
	}
	return build(tables)
}

// Load reads the allow-list from a file (JSON) when path is set, else from the compact string.
func Load(path, compact string) (*List, error) {
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("allow-list: %w", err)
		}
		return Parse(data)
	}
	if strings.TrimSpace(compact) == "" {
		return nil, errors.New("allow-list: no tables configured")
	}
	return ParseCompact(compact)
}

func build(tables map[string]*Table) (*List, error) {
	if len(tables) == 0 {
		return nil, errors.New("allow-list: no tables configured")
	}
	l := &List{tables: map[string]*Table{}}
	for name, t := range tables {
		if t == nil {
			return nil, fmt.Errorf("allow-list: table %q: empty entry", name)
		}
		if t.Table == "" {
			t.Table = name
		}
		t.Name = name
		for _, id := range []string{name, t.Table} {
			if !ident.MatchString(id) {
				return nil, fmt.Errorf("allow-list: %q is not a plain identifier", id)
			}
		}
		if t.Schema != "" && !ident.MatchString(t.Schema) {
			return nil, fmt.Errorf("allow-list: %q is not a plain identifier", t.Schema)
		}
		if len(t.Columns) == 0 {
			return nil, fmt.Errorf("allow-list: table %q: no columns", name)
		}
		t.allowed = map[string]string{}
		for _, c := range t.Columns {
			if !ident.MatchString(c) {
				return nil, fmt.Errorf("allow-list: table %q: column %q is not a plain identifier", name, c)
			}
			if _, dup := t.allowed[c]; dup {
				return nil, fmt.Errorf("allow-list: table %q: column %q listed twice", name, c)
			}
			t.allowed[c] = c
		}
		l.tables[name] = t
	}
	return l, nil
}
