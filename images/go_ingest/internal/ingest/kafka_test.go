package ingest_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/ingest"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/kafkapub"
)

// go_ingest with Kafka publishing, against kfake (franz-go's in-process Kafka) and the real PostgreSQL.

func kafkaFixture(t *testing.T) (*fixture, *kfake.Cluster) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	p, err := kafkapub.New(kafkapub.Options{Brokers: c.ListenAddrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return newFixtureWith(t, ingest.Options{Publisher: p, PublishTimeout: 2 * time.Second}), c
}

func consumeAll(t *testing.T, brokers []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < n && ctx.Err() == nil {
		got = append(got, cl.PollFetches(ctx).Records()...)
	}
	// A little longer: nothing more than n may be there.
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	got = append(got, cl.PollFetches(short).Records()...)
	return got
}

func TestKafkaPublishesCommittedBatches(t *testing.T) {
	f, c := kafkaFixture(t)

	code, out := f.post(t, "/v1/ingest/events", bearer, `[{"source":"k1","n":1,"payload":{"a":[1,2]}},{"source":"k2"}]`)
	if code != 200 || out["kafka"] != "published" || out["rows"] != float64(2) {
		t.Fatalf("status %d %v, want 200 with kafka=published and rows=2", code, out)
	}
	batch, _ := out["batch"].(string)
	if len(batch) != 32 {
		t.Fatalf("batch id %q, want 32 hex characters", batch)
	}
	// A batch PostgreSQL refuses (NOT NULL source) and one the allow-list refuses are not published.
	if code, out := f.post(t, "/v1/ingest/events", bearer, `[{"n":3}]`); code != 400 || out["kafka"] != nil {
		t.Fatalf("rejected batch: status %d %v", code, out)
	}
	if code, _ := f.post(t, "/v1/ingest/events", bearer, `[{"source":"x","nope":1}]`); code != 400 {
		t.Fatalf("unknown column: status %d", code)
	}
	if code, out := f.post(t, "/v1/ingest/events", bearer, "{\"source\":\"k3\"}\n"); code != 200 || out["kafka"] != "published" {
		t.Fatalf("NDJSON batch: status %d %v", code, out)
	}
	if n := f.count(t); n != 3 {
		t.Fatalf("%d rows in PostgreSQL, want 3", n)
	}

	recs := consumeAll(t, c.ListenAddrs(), "ingest.events", 3)
	if len(recs) != 3 {
		t.Fatalf("%d records on ingest.events, want 3 (the committed ones only)", len(recs))
	}
	// By key: the first batch's two records (one partition, in order), and the NDJSON batch's one under
	// another key. Records of different partitions come in any order.
	byKey := map[string][]string{}
	for _, r := range recs {
		var v map[string]any
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Errorf("value %q is not JSON: %v", r.Value, err)
		}
		byKey[string(r.Key)] = append(byKey[string(r.Key)], string(r.Value))
	}
	if got, want := byKey[batch], []string{`{"n":1,"payload":{"a":[1,2]},"source":"k1"}`, `{"source":"k2"}`}; !slices.Equal(got, want) {
		t.Errorf("records under the batch id %s: %q, want %q", batch, got, want)
	}
	delete(byKey, batch)
	if len(byKey) != 1 {
		t.Errorf("the NDJSON batch: keys %v, want one other key", byKey)
	}
	for _, v := range byKey {
		if !slices.Equal(v, []string{`{"source":"k3"}`}) {
			t.Errorf("the NDJSON batch: %q", v)
		}
	}

	metrics := metricsOf(t, f.srv.URL)
	if !strings.Contains(metrics, `ingest_kafka_records_total{result="published",table="events"} 3`) {
		t.Errorf("metrics do not count 3 published records:\n%s", grep(metrics, "ingest_kafka"))
	}
}

// Kafka down: the rows are committed, the response says so and that Kafka failed; nothing to retry.
func TestKafkaDownKeepsIngesting(t *testing.T) {
	f, c := kafkaFixture(t)
	c.Close()
	start := time.Now()
	code, out := f.post(t, "/v1/ingest/events", bearer, `[{"source":"down"}]`)
	if code != 200 || out["kafka"] != "failed" || out["rows"] != float64(1) {
		t.Fatalf("status %d %v, want 200 with rows=1 and kafka=failed", code, out)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("the request took %s with a 2s publish timeout", d)
	}
	if n := f.count(t); n != 1 {
		t.Fatalf("%d rows in PostgreSQL, want 1", n)
	}
	metrics := metricsOf(t, f.srv.URL)
	if !strings.Contains(metrics, `ingest_kafka_records_total{result="failed",table="events"} 1`) {
		t.Errorf("metrics do not count the failed record:\n%s", grep(metrics, "ingest_kafka"))
	}
}

// Without a publisher the response and metrics are as before: no kafka fields, no kafka series.
func TestNoKafka(t *testing.T) {
	f := newFixture(t, 0)
	code, out := f.post(t, "/v1/ingest/events", bearer, `[{"source":"plain"}]`)
	if code != 200 || out["kafka"] != nil || out["batch"] != nil {
		t.Fatalf("status %d %v", code, out)
	}
	if m := metricsOf(t, f.srv.URL); strings.Contains(m, "ingest_kafka") {
		t.Error("kafka metrics without a publisher")
	}
}

func metricsOf(t *testing.T, base string) string {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	return body
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
