package pgstore

import (
	"testing"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/allowlist"
)

func TestStatement(t *testing.T) {
	l, err := allowlist.ParseCompact("e=raw.events:source,payload")
	if err != nil {
		t.Fatal(err)
	}
	tab, _ := l.Lookup("e")
	got := Statement(tab, []string{"payload", "source"})
	want := `INSERT INTO "raw"."events" ("payload", "source") SELECT "payload", "source" FROM jsonb_populate_recordset(NULL::"raw"."events", $1::jsonb)`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
