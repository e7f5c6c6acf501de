// Package pgstore writes go_ingest's record batches into PostgreSQL with pgx.
//
// In: an allow-listed table and record groups (each a JSON array of objects whose keys are all allow-listed
// columns). Out: the number of rows inserted, or an error (ingest.RejectedError when PostgreSQL refuses the
// data itself). Every statement is parameterized: identifiers come only from the allow-list and are quoted with
// pgx.Identifier; the records travel as one jsonb parameter and PostgreSQL converts them to the table's row
// type (jsonb_populate_recordset), so no request text is ever part of the SQL. Imports allowlist and ingest.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/allowlist"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/ingest"
)

// Store is a pgx connection pool.
type Store struct {
	Pool *pgxpool.Pool
}

// New opens a pool (lazily: no connection is made until first use). password, when not empty, overrides the
// DSN's (it comes from a Docker secret file, so it is never part of the DSN in the environment).
func New(ctx context.Context, dsn, password string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors may quote the DSN; do not pass them on.
		return nil, errors.New("pgstore: the database URL does not parse")
	}
	if password != "" {
		cfg.ConnConfig.Password = password
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return &Store{Pool: pool}, nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.Pool.Ping(ctx) }

// Close closes the pool.
func (s *Store) Close() { s.Pool.Close() }

// Insert writes all groups in one transaction.
func (s *Store) Insert(ctx context.Context, t *allowlist.Table, groups []ingest.Group) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		for _, g := range groups {
			tag, err := tx.Exec(ctx, Statement(t, g.Columns), string(g.Records))
			if err != nil {
				return err
			}
			n += tag.RowsAffected()
		}
		return nil
	})
	if err != nil {
		return 0, classify(err)
	}
	return n, nil
}

// Statement is the INSERT for one group. columns must come from t (the caller looked them up with t.Column).
func Statement(t *allowlist.Table, columns []string) string {
	table := pgx.Identifier(t.Identifier()).Sanitize()
	quoted := make([]string, len(columns))
	for i, c := range columns {
		quoted[i] = pgx.Identifier{c}.Sanitize()
	}
	list := strings.Join(quoted, ", ")
	return "INSERT INTO " + table + " (" + list + ") SELECT " + list +
		" FROM jsonb_populate_recordset(NULL::" + table + ", $1::jsonb)"
}

func classify(err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch {
		case pg.Code == "42P01", pg.Code == "42703", pg.Code == "3F000": // undefined table, column, schema
			return fmt.Errorf("pgstore: %w: %s", ingest.ErrSchemaMismatch, pg.Message)
		case strings.HasPrefix(pg.Code, "22"), strings.HasPrefix(pg.Code, "23"):
			// data exception or integrity constraint violation: the records are at fault.
			return &ingest.RejectedError{Code: pg.Code, Message: pg.Message}
		}
		return fmt.Errorf("pgstore: %s (SQLSTATE %s): %w", pg.Message, pg.Code, err)
	}
	return fmt.Errorf("pgstore: %w", err)
}
