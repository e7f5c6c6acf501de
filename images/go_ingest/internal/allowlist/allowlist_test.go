package allowlist

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParse(t *testing.T) {
	l, err := Parse([]byte(`{"tables": {"events": {"schema": "raw", "columns": ["source", "payload"]},
		"m": {"table": "metrics", "columns": ["name"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Names(); !reflect.DeepEqual(got, []string{"events", "m"}) {
		t.Fatalf("names %v", got)
	}
	ev, _ := l.Lookup("events")
	if !reflect.DeepEqual(ev.Identifier(), []string{"raw", "events"}) {
		t.Fatalf("identifier %v", ev.Identifier())
	}
	if c, ok := ev.Column("payload"); !ok || c != "payload" {
		t.Fatal("payload not allowed")
	}
	if _, ok := ev.Column("Payload"); ok {
		t.Fatal("column lookup must be exact")
	}
	m, _ := l.Lookup("m")
	if !reflect.DeepEqual(m.Identifier(), []string{"metrics"}) {
		t.Fatalf("identifier %v", m.Identifier())
	}
	if _, ok := l.Lookup("metrics"); ok {
		t.Fatal("lookup is by URL name only")
	}
}

func TestParseCompact(t *testing.T) {
	l, err := ParseCompact(" events=source, payload ; m=public.metrics:name,value;")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := l.Lookup("m")
	if !reflect.DeepEqual(m.Identifier(), []string{"public", "metrics"}) || !reflect.DeepEqual(m.Columns, []string{"name", "value"}) {
		t.Fatalf("%+v", m)
	}
	ev, _ := l.Lookup("events")
	if !reflect.DeepEqual(ev.Columns, []string{"source", "payload"}) {
		t.Fatalf("%+v", ev)
	}
}

func TestRejects(t *testing.T) {
	for _, s := range []string{
		"", "events", "events=", "events=a;events=b", "events=a,a",
		`events=a"b`, "events=a b", "bad-name=a", "e=x.y.z:a", "e=sch.:a", "e=a;DROP TABLE x",
	} {
		if _, err := ParseCompact(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	for _, s := range []string{`{}`, `{"tables":{}}`, `{"tables":{"e":{"columns":[]}}}`, `{"tables":{"e":{"colums":["a"]}}}`,
		`{"tables":{"e":{"schema":"a;b","columns":["a"]}}}`} {
		if _, err := Parse([]byte(s)); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tables.json")
	if err := os.WriteFile(p, []byte(`{"tables":{"e":{"columns":["a"]}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Load(p, "ignored=b")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Lookup("e"); !ok {
		t.Fatal("file not used")
	}
	if _, err := Load("", " "); err == nil {
		t.Fatal("empty configuration accepted")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Fatal("missing file accepted")
	}
}
