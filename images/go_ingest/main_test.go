package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/pgtest"
)

// The test binary doubles as the service: with GO_INGEST_TEST_MAIN=1 it runs main(), so the tests can send a
// real SIGTERM to a real process.
func TestMain(m *testing.M) {
	if os.Getenv("GO_INGEST_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

const testToken = "main-test-token-9f8e"

type proc struct {
	cmd  *exec.Cmd
	addr string
	mu   sync.Mutex
	log  strings.Builder
	done chan error
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func command(t *testing.T, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "GO_INGEST_TEST_MAIN=1")
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

func start(t *testing.T, env []string) *proc {
	t.Helper()
	p := &proc{cmd: command(t, env), done: make(chan error, 1)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				addr <- rec.Addr
			}
		}
		p.done <- p.cmd.Wait()
	}()
	select {
	case p.addr = <-addr:
	case <-time.After(20 * time.Second):
		t.Fatalf("the service did not start:\n%s", p.logs())
	}
	return p
}

func serviceEnv(t *testing.T, table string) []string {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "ingest_token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{
		"INGEST_LISTEN=127.0.0.1:0",
		"INGEST_DATABASE_URL=" + pgtest.DSN(t),
		"INGEST_TOKEN_FILE=" + tokenFile,
		"INGEST_TABLES=events=" + table + ":source",
		"INGEST_SHUTDOWN_TIMEOUT=15s",
	}
}

// TestGracefulShutdown sends SIGTERM while a request is in flight (its body only half sent): the listener
// closes at once, the request still completes and its rows are committed, and the process exits 0.
func TestGracefulShutdown(t *testing.T) {
	pool := pgtest.Pool(t)
	table := pgtest.Table(t, pool, "shutdown", "id bigserial PRIMARY KEY, source text NOT NULL")
	p := start(t, serviceEnv(t, table))

	body, w := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/v1/ingest/events", body)
	req.Header.Set("Authorization", "Bearer "+testToken)
	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		res <- result{code: resp.StatusCode, body: string(data)}
	}()
	if _, err := io.WriteString(w, `[{"source":"in flight 1"},`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the handler is now reading the body

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if !strings.Contains(p.logs(), "shutting down") {
			if time.Now().After(deadline) {
				t.Fatalf("no shutdown after SIGTERM:\n%s", p.logs())
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		break
	}
	time.Sleep(100 * time.Millisecond)
	if c, err := net.DialTimeout("tcp", p.addr, time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts connections after SIGTERM")
	}
	select {
	case err := <-p.done:
		t.Fatalf("the process exited (%v) before the in-flight request finished", err)
	default:
	}

	if _, err := io.WriteString(w, `{"source":"in flight 2"}]`); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r := <-res
	if r.err != nil || r.code != 200 || !strings.Contains(r.body, `"rows":2`) {
		t.Fatalf("in-flight request: %d %q %v", r.code, r.body, r.err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.logs())
		}
		p.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatalf("the process did not exit after the in-flight request:\n%s", p.logs())
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d rows committed, want 2", n)
	}
	logs := p.logs()
	for _, want := range []string{`"msg":"shutting down"`, `"msg":"stopped"`, `"status":200`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, testToken) {
		t.Fatal("the token appears in the logs")
	}
}

func TestHealthcheckFlag(t *testing.T) {
	pool := pgtest.Pool(t)
	table := pgtest.Table(t, pool, "hc", "source text")
	env := serviceEnv(t, table)
	p := start(t, env)
	probeEnv := []string{"INGEST_LISTEN=" + p.addr}
	if out, err := command(t, probeEnv, "-healthcheck").CombinedOutput(); err != nil {
		t.Fatalf("-healthcheck on a healthy service: %v %s", err, out)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.done; err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	p.done <- nil
	out, err := command(t, probeEnv, "-healthcheck").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("-healthcheck with the service gone: %v %s, want exit 1", err, out)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	tok := filepath.Join(dir, "token")
	_ = os.WriteFile(tok, []byte(testToken), 0o600)
	base := map[string]string{
		"INGEST_DATABASE_URL": "postgres://127.0.0.1:1/x", "INGEST_TOKEN_FILE": tok, "INGEST_TABLES": "e=a",
	}
	for name, tc := range map[string]struct {
		set  map[string]string
		want string
	}{
		"no database":                 {map[string]string{"INGEST_DATABASE_URL": ""}, "INGEST_DATABASE_URL"},
		"empty token":                 {map[string]string{"INGEST_TOKEN_FILE": empty}, "is empty"},
		"missing token file":          {map[string]string{"INGEST_TOKEN_FILE": filepath.Join(dir, "nope")}, "INGEST_TOKEN_FILE"},
		"no tables":                   {map[string]string{"INGEST_TABLES": ""}, "no tables"},
		"bad body limit":              {map[string]string{"INGEST_MAX_BODY_BYTES": "-1"}, "INGEST_MAX_BODY_BYTES"},
		"bad database URL":            {map[string]string{"INGEST_DATABASE_URL": "postgres://u:hunter2@[::1"}, "does not parse"},
		"kafka topic without {table}": {map[string]string{"INGEST_KAFKA_BROKERS": "k:9092", "INGEST_KAFKA_TOPIC": "all"}, "INGEST_KAFKA_TOPIC"},
		"kafka partitions":            {map[string]string{"INGEST_KAFKA_PARTITIONS": "0"}, "INGEST_KAFKA_PARTITIONS"},
		"kafka replication":           {map[string]string{"INGEST_KAFKA_REPLICATION_FACTOR": "x"}, "INGEST_KAFKA_REPLICATION_FACTOR"},
		"kafka timeout":               {map[string]string{"INGEST_KAFKA_TIMEOUT": "soon"}, "INGEST_KAFKA_TIMEOUT"},
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.set {
				env[k] = v
			}
			var errOut strings.Builder
			code := realMain(nil, func(k string) string { return env[k] }, &errOut)
			if code != 2 || !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 mentioning %q", code, errOut.String(), tc.want)
			}
			if strings.Contains(errOut.String(), "hunter2") || strings.Contains(errOut.String(), testToken) {
				t.Fatalf("a secret reached the logs: %s", errOut.String())
			}
		})
	}
}

// TestKafkaProcess: the real process with INGEST_KAFKA_BROKERS (kfake, franz-go's in-process Kafka): a batch is
// committed to PostgreSQL and its records are on the topic of INGEST_KAFKA_TOPIC, keyed by the batch id the
// response names.
func TestKafkaProcess(t *testing.T) {
	pool := pgtest.Pool(t)
	table := pgtest.Table(t, pool, "kafka", "id bigserial PRIMARY KEY, source text NOT NULL")
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	env := append(serviceEnv(t, table), "INGEST_KAFKA_BROKERS="+strings.Join(c.ListenAddrs(), ","),
		"INGEST_KAFKA_TOPIC=sawmill.{table}", "INGEST_KAFKA_PARTITIONS=2")
	p := start(t, env)

	req, _ := http.NewRequest(http.MethodPost, "http://"+p.addr+"/v1/ingest/events",
		strings.NewReader(`[{"source":"p1"},{"source":"p2"}]`))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Rows         int
		Batch, Kafka string
	}
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || out.Rows != 2 || out.Kafka != "published" {
		t.Fatalf("status %d %+v %v\n%s", resp.StatusCode, out, err, p.logs())
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("sawmill.events"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var values []string
	for len(values) < 2 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			if string(r.Key) != out.Batch {
				t.Errorf("key %q, want the batch %q", r.Key, out.Batch)
			}
			values = append(values, string(r.Value))
		})
	}
	if strings.Join(values, " ") != `{"source":"p1"} {"source":"p2"}` {
		t.Fatalf("records on sawmill.events: %q", values)
	}
	if !strings.Contains(p.logs(), `"msg":"publishing to kafka"`) {
		t.Errorf("the start-up log does not say it publishes:\n%s", p.logs())
	}
}
