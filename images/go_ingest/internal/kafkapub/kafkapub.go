// Package kafkapub publishes go_ingest's accepted batches to Kafka, with franz-go (github.com/twmb/franz-go).
//
// In: the brokers, a topic template ("ingest.{table}"), the records of a batch PostgreSQL has committed.
// Out: one Kafka record per ingested record, on the table's topic, all records of a batch with the same key
// (the batch id), so they land on one partition in the order they were sent. The value is the record as
// accepted (a JSON object of allow-listed columns); headers name the table and the batch.
//
// Delivery: the producer is idempotent and waits for all in-sync replicas (acks=all), so a retry inside the
// client never duplicates a record. Publish waits for the broker's answer, up to the caller's deadline; a batch
// that could not be published is reported as an error and not re-sent: PostgreSQL is the system of record,
// Kafka a feed of it (at most once per batch, never before the commit). Topics are created on first use when
// missing (the platform's broker does not create topics itself).
package kafkapub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Options configure a Publisher.
type Options struct {
	Brokers []string
	// Topic is the topic name for a table: "{table}" is replaced by the allow-list name of the table.
	// Default "ingest.{table}".
	Topic string
	// Partitions and ReplicationFactor of the topics created on first use (defaults 3 and 1).
	Partitions        int32
	ReplicationFactor int16
	// ClientID is the Kafka client id (default "go_ingest").
	ClientID string
}

// Publisher is a Kafka producer for ingested batches. It is safe for concurrent use.
type Publisher struct {
	o       Options
	client  *kgo.Client
	admin   *kadm.Client
	mu      sync.Mutex
	created map[string]bool
}

// New returns a Publisher. It does not connect: the first Publish does (so go_ingest starts, and keeps
// writing to PostgreSQL, while Kafka is away).
func New(o Options) (*Publisher, error) {
	if len(o.Brokers) == 0 {
		return nil, errors.New("kafkapub: no brokers")
	}
	if o.Topic == "" {
		o.Topic = "ingest.{table}"
	}
	if !strings.Contains(o.Topic, "{table}") {
		return nil, fmt.Errorf("kafkapub: topic template %q does not contain {table}", o.Topic)
	}
	if o.Partitions <= 0 {
		o.Partitions = 3
	}
	if o.ReplicationFactor <= 0 {
		o.ReplicationFactor = 1
	}
	if o.ClientID == "" {
		o.ClientID = "go_ingest"
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID(o.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()), // with idempotent writes, franz-go's default
		kgo.ProducerLinger(0),
	)
	if err != nil {
		return nil, fmt.Errorf("kafkapub: %w", err)
	}
	return &Publisher{o: o, client: client, admin: kadm.NewClient(client), created: map[string]bool{}}, nil
}

// TopicFor is the topic of a table.
func (p *Publisher) TopicFor(table string) string {
	return strings.ReplaceAll(p.o.Topic, "{table}", table)
}

// Publish sends the records of one committed batch and waits for the broker's acknowledgement (or ctx).
// It returns how many records the broker acknowledged and the first error.
func (p *Publisher) Publish(ctx context.Context, table, batch string, records [][]byte) (int, error) {
	if len(records) == 0 {
		return 0, nil
	}
	topic := p.TopicFor(table)
	if err := p.ensureTopic(ctx, topic); err != nil {
		return 0, err
	}
	headers := []kgo.RecordHeader{
		{Key: "table", Value: []byte(table)},
		{Key: "batch", Value: []byte(batch)},
		{Key: "content-type", Value: []byte("application/json")},
	}
	rs := make([]*kgo.Record, len(records))
	for i, v := range records {
		rs[i] = &kgo.Record{Topic: topic, Key: []byte(batch), Value: v, Headers: headers}
	}
	results := p.client.ProduceSync(ctx, rs...)
	acked := 0
	for _, r := range results {
		if r.Err == nil {
			acked++
		}
	}
	if err := results.FirstErr(); err != nil {
		return acked, fmt.Errorf("kafkapub: produce to %s: %w", topic, err)
	}
	return acked, nil
}

// ensureTopic creates the topic once per process if it does not exist.
func (p *Publisher) ensureTopic(ctx context.Context, topic string) error {
	p.mu.Lock()
	done := p.created[topic]
	p.mu.Unlock()
	if done {
		return nil
	}
	_, err := p.admin.CreateTopic(ctx, p.o.Partitions, p.o.ReplicationFactor, nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("kafkapub: create topic %s: %w", topic, err)
	}
	p.mu.Lock()
	p.created[topic] = true
	p.mu.Unlock()
	return nil
}

// Close flushes nothing (Publish is synchronous) and closes the connections.
func (p *Publisher) Close() { p.client.Close() }
