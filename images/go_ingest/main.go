// Command go_ingest is the platform's ingest service: it writes JSON records into allow-listed PostgreSQL
// tables (POST /v1/ingest/{table}), behind a bearer token read from a Docker secret file.
//
// With INGEST_KAFKA_BROKERS set, every committed batch is also published to Kafka (internal/kafkapub).
// Configuration comes from the environment only (see README.md); `go_ingest -healthcheck` probes the running
// service's /healthz on 127.0.0.1 and exits 0 or 1, for the image's HEALTHCHECK (the image is FROM scratch,
// without curl). Exit codes: 0 clean shutdown or healthy, 1 runtime failure or unhealthy, 2 bad configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/allowlist"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/ingest"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/kafkapub"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/pgstore"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Getenv, os.Stderr))
}

type config struct {
	listen          string
	databaseURL     string
	passwordFile    string
	tokenFile       string
	tablesFile      string
	tables          string
	maxBody         int64
	shutdownTimeout time.Duration
	logLevel        slog.Level
	kafka           kafkaConfig
}

// kafkaConfig is the optional Kafka publishing; off when brokers is empty.
type kafkaConfig struct {
	brokers     []string
	topic       string
	partitions  int32
	replication int16
	timeout     time.Duration
}

func loadConfig(getenv func(string) string) (config, error) {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	c := config{
		listen:       env("INGEST_LISTEN", ":8080"),
		databaseURL:  getenv("INGEST_DATABASE_URL"),
		passwordFile: getenv("INGEST_DATABASE_PASSWORD_FILE"),
		tokenFile:    env("INGEST_TOKEN_FILE", "/run/secrets/ingest_token"),
		tablesFile:   getenv("INGEST_TABLES_FILE"),
		tables:       getenv("INGEST_TABLES"),
	}
	var err error
	if c.maxBody, err = strconv.ParseInt(env("INGEST_MAX_BODY_BYTES", "1048576"), 10, 64); err != nil || c.maxBody <= 0 {
		return c, errors.New("INGEST_MAX_BODY_BYTES: want a positive number of bytes")
	}
	if c.shutdownTimeout, err = time.ParseDuration(env("INGEST_SHUTDOWN_TIMEOUT", "20s")); err != nil {
		return c, fmt.Errorf("INGEST_SHUTDOWN_TIMEOUT: %w", err)
	}
	if err := c.logLevel.UnmarshalText([]byte(env("INGEST_LOG_LEVEL", "info"))); err != nil {
		return c, fmt.Errorf("INGEST_LOG_LEVEL: %w", err)
	}
	for _, b := range strings.Split(getenv("INGEST_KAFKA_BROKERS"), ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.kafka.brokers = append(c.kafka.brokers, b)
		}
	}
	c.kafka.topic = env("INGEST_KAFKA_TOPIC", "ingest.{table}")
	if !strings.Contains(c.kafka.topic, "{table}") {
		return c, errors.New("INGEST_KAFKA_TOPIC: the template must contain {table}")
	}
	p, err := strconv.ParseInt(env("INGEST_KAFKA_PARTITIONS", "3"), 10, 32)
	if err != nil || p <= 0 {
		return c, errors.New("INGEST_KAFKA_PARTITIONS: want a positive number")
	}
	c.kafka.partitions = int32(p)
	r, err := strconv.ParseInt(env("INGEST_KAFKA_REPLICATION_FACTOR", "1"), 10, 16)
	if err != nil || r <= 0 {
		return c, errors.New("INGEST_KAFKA_REPLICATION_FACTOR: want a positive number")
	}
	c.kafka.replication = int16(r)
	if c.kafka.timeout, err = time.ParseDuration(env("INGEST_KAFKA_TIMEOUT", "5s")); err != nil || c.kafka.timeout <= 0 {
		return c, errors.New("INGEST_KAFKA_TIMEOUT: want a positive duration such as 5s")
	}
	return c, nil
}

func realMain(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("go_ingest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	healthcheck := fs.Bool("healthcheck", false, "probe http://127.0.0.1:PORT/healthz of the running service and exit 0 (healthy) or 1")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		fmt.Fprintln(stderr, "go_ingest:", err)
		return 2
	}
	if *healthcheck {
		if err := probe(cfg.listen); err != nil {
			fmt.Fprintln(stderr, "unhealthy:", err)
			return 1
		}
		return 0
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("go_ingest failed", "err", err)
		var ce configError
		if errors.As(err, &ce) {
			return 2
		}
		return 1
	}
	return 0
}

type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

func readSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = []byte(strings.TrimSpace(string(b)))
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}

// run serves until ctx is done, then shuts down gracefully: the listener closes, in-flight requests finish
// (up to cfg.shutdownTimeout), then the pool closes.
func run(ctx context.Context, cfg config, logger *slog.Logger) error {
	if cfg.databaseURL == "" {
		return configError{errors.New("INGEST_DATABASE_URL is not set")}
	}
	token, err := readSecret(cfg.tokenFile)
	if err != nil {
		return configError{fmt.Errorf("token (INGEST_TOKEN_FILE): %w", err)}
	}
	var password []byte
	if cfg.passwordFile != "" {
		if password, err = readSecret(cfg.passwordFile); err != nil {
			return configError{fmt.Errorf("database password (INGEST_DATABASE_PASSWORD_FILE): %w", err)}
		}
	}
	tables, err := allowlist.Load(cfg.tablesFile, cfg.tables)
	if err != nil {
		return configError{err}
	}
	store, err := pgstore.New(ctx, cfg.databaseURL, string(password))
	if err != nil {
		return configError{err}
	}
	defer store.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := ingest.Options{
		Tables: tables, Store: store, Token: token, MaxBodyBytes: cfg.maxBody, Logger: logger, Registry: reg,
	}
	if len(cfg.kafka.brokers) > 0 {
		pub, err := kafkapub.New(kafkapub.Options{
			Brokers: cfg.kafka.brokers, Topic: cfg.kafka.topic,
			Partitions: cfg.kafka.partitions, ReplicationFactor: cfg.kafka.replication,
		})
		if err != nil {
			return configError{err}
		}
		defer pub.Close()
		opts.Publisher, opts.PublishTimeout = pub, cfg.kafka.timeout
		logger.Info("publishing to kafka", "brokers", cfg.kafka.brokers, "topic", cfg.kafka.topic)
	}
	handler, err := ingest.New(opts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("listening", "addr", ln.Addr().String(), "tables", tables.Names(), "max_body_bytes", cfg.maxBody)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down", "timeout", cfg.shutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// probe is the -healthcheck mode: GET /healthz on the loopback address of the configured port.
func probe(listen string) error {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("INGEST_LISTEN %q: %w", listen, err)
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz answered %s", resp.Status)
	}
	return nil
}
