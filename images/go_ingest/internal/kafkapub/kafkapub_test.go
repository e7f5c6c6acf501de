package kafkapub_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/kafkapub"
)

// The tests run against kfake, the in-process Kafka of franz-go's own project: a real Kafka wire protocol on
// a local port. It does not create topics on produce (as the platform's broker, KAFKA_AUTO_CREATE_TOPICS_ENABLE
// false), so the Publisher has to.

func cluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func publisher(t *testing.T, brokers []string, topic string) *kafkapub.Publisher {
	t.Helper()
	p, err := kafkapub.New(kafkapub.Options{Brokers: brokers, Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// consume reads n records of a topic from the beginning (fails after 10s).
func consume(t *testing.T, brokers []string, topic string, n int) []*kgo.Record {
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
	for len(got) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("%s: %d records after 10s, want %d", topic, len(got), n)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		got = append(got, fs.Records()...)
	}
	return got
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func TestPublish(t *testing.T) {
	c := cluster(t)
	brokers := c.ListenAddrs()
	p := publisher(t, brokers, "")
	if got := p.TopicFor("events"); got != "ingest.events" {
		t.Fatalf("default topic %q, want ingest.events", got)
	}
	ctx := context.Background()
	var batch1, batch2 [][]byte
	for i := range 5 {
		batch1 = append(batch1, fmt.Appendf(nil, `{"n":%d,"source":"one"}`, i))
		batch2 = append(batch2, fmt.Appendf(nil, `{"n":%d,"source":"two"}`, i))
	}
	if n, err := p.Publish(ctx, "events", "b1", batch1); err != nil || n != 5 {
		t.Fatalf("first batch: %d acknowledged, %v", n, err)
	}
	if n, err := p.Publish(ctx, "events", "b2", batch2); err != nil || n != 5 {
		t.Fatalf("second batch (topic exists now): %d acknowledged, %v", n, err)
	}

	// The topic was created with the default partitions; a batch is one key, so one partition, in order.
	adm := kadm.NewClient(kgoClient(t, brokers))
	details, err := adm.ListTopics(ctx, "ingest.events")
	if err != nil {
		t.Fatal(err)
	}
	if d := details["ingest.events"]; d.Err != nil || len(d.Partitions) != 3 {
		t.Fatalf("topic ingest.events: %v, %d partitions, want 3", d.Err, len(d.Partitions))
	}
	recs := consume(t, brokers, "ingest.events", 10)
	byBatch := map[string][]*kgo.Record{}
	for _, r := range recs {
		if string(r.Key) != header(r, "batch") {
			t.Errorf("key %q, batch header %q: want the same", r.Key, header(r, "batch"))
		}
		if header(r, "table") != "events" || header(r, "content-type") != "application/json" {
			t.Errorf("headers %v", r.Headers)
		}
		byBatch[string(r.Key)] = append(byBatch[string(r.Key)], r)
	}
	for key, want := range map[string][][]byte{"b1": batch1, "b2": batch2} {
		got := byBatch[key]
		if len(got) != len(want) {
			t.Fatalf("batch %s: %d records, want %d", key, len(got), len(want))
		}
		for i, r := range got {
			if r.Partition != got[0].Partition {
				t.Errorf("batch %s spread over partitions %d and %d", key, got[0].Partition, r.Partition)
			}
			if string(r.Value) != string(want[i]) {
				t.Errorf("batch %s record %d: %s, want %s (in order)", key, i, r.Value, want[i])
			}
		}
	}
}

func TestPublishExistingTopicAndTemplate(t *testing.T) {
	c := cluster(t, kfake.SeedTopics(1, "sawmill.metrics.raw"))
	p := publisher(t, c.ListenAddrs(), "sawmill.{table}.raw")
	if n, err := p.Publish(context.Background(), "metrics", "b", [][]byte{[]byte(`{"v":1}`)}); err != nil || n != 1 {
		t.Fatalf("publish to an existing topic: %d, %v", n, err)
	}
	if r := consume(t, c.ListenAddrs(), "sawmill.metrics.raw", 1)[0]; string(r.Value) != `{"v":1}` {
		t.Fatalf("value %s", r.Value)
	}
	if _, err := kafkapub.New(kafkapub.Options{Brokers: []string{"x:9092"}, Topic: "fixed"}); err == nil {
		t.Fatal("a template without {table} was accepted")
	}
	if _, err := kafkapub.New(kafkapub.Options{}); err == nil {
		t.Fatal("no brokers was accepted")
	}
}

// A broker that is gone: Publish gives up at the caller's deadline with an error, acknowledging nothing.
func TestPublishBrokerDown(t *testing.T) {
	c := cluster(t)
	brokers := c.ListenAddrs()
	c.Close()
	p := publisher(t, brokers, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	n, err := p.Publish(ctx, "events", "b", [][]byte{[]byte(`{}`)})
	if err == nil || n != 0 {
		t.Fatalf("publish with the broker down: %d acknowledged, err %v", n, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s past a 2s deadline: %v", d, err)
	}
}

func kgoClient(t *testing.T, brokers []string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}
