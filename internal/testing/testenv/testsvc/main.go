// Command testsvc is the workload of the end-to-end tests: a static HTTP server that is put into a FROM
// scratch image. It answers / with $MESSAGE, /healthz with ok, and /secret/NAME with the SHA-256 of
// /run/secrets/NAME (never the value). With $EXIT_CODE set it exits at once with that code; with
// -probe URL it fetches URL and exits 0 on a 2xx answer (for healthchecks).
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	probe := flag.String("probe", "", "fetch this URL and exit 0 when it answers 2xx")
	flag.Parse()
	if *probe != "" {
		c := http.Client{Timeout: 2 * time.Second}
		r, err := c.Get(*probe)
		if err != nil || r.StatusCode/100 != 2 {
			os.Exit(1)
		}
		os.Exit(0)
	}
	if code := os.Getenv("EXIT_CODE"); code != "" {
		n, _ := strconv.Atoi(code)
		fmt.Fprintln(os.Stderr, "exiting with", n)
		os.Exit(n)
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, os.Getenv("MESSAGE")) })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if os.Getenv("UNHEALTHY") != "" {
			http.Error(w, "unhealthy", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/secret/{name}", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join("/run/secrets", filepath.Base(r.PathValue("name"))))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		sum := sha256.Sum256(b)
		fmt.Fprintln(w, hex.EncodeToString(sum[:]))
	})
	mux.HandleFunc("/config/{name...}", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile("/" + r.PathValue("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
