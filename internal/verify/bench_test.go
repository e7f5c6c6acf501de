package verify

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// TestVerifyBenchmark is the benchmark of issue 4 (bench/verify.sh runs it): N signed images (default 50)
// in an in-process registry; the package's VerifyAll cold (a new Verifier each round, tags resolved,
// signatures fetched and checked) and warm (the same Verifier again: tags re-resolved, verifications from the
// cache), against a loop of `cosign verify` over the same images in the same run. Goals: cold at least 20x
// faster than the CLI loop, warm under 1 ms per image. Runs only with SAWMILL_VERIFY_BENCH=1.
func TestVerifyBenchmark(t *testing.T) {
	if os.Getenv("SAWMILL_VERIFY_BENCH") != "1" {
		t.Skip("set SAWMILL_VERIFY_BENCH=1 (bench/verify.sh)")
	}
	bin := cosignCLI(t)
	n := 50
	if s := os.Getenv("BENCH_IMAGES"); s != "" {
		fmt.Sscan(s, &n)
	}
	reg := newRegistry(t, true)
	k := newKey(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "test.pub"), k.pem)
	var refs []string
	for i := 0; i < n; i++ {
		repo := fmt.Sprintf("bench/svc%02d", i)
		d := reg.pushImage(t, repo, "v1")
		signLegacy(t, k, d)
		refs = append(refs, reg.host+"/"+repo+":v1")
	}
	trust := keyPolicy(t, reg.host, Enforce, k)

	median := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	var cold, warm []time.Duration
	for round := 0; round < 5; round++ {
		v := New(trust, Options{})
		start := time.Now()
		if _, err := v.VerifyAll(ctx(t), refs); err != nil {
			t.Fatal(err)
		}
		cold = append(cold, time.Since(start))
		for i := 0; i < 4; i++ {
			start = time.Now()
			res, err := v.VerifyAll(ctx(t), refs)
			if err != nil {
				t.Fatal(err)
			}
			warm = append(warm, time.Since(start))
			if !res[0].Cached {
				t.Fatal("warm round not served from the cache")
			}
		}
	}
	start := time.Now()
	for _, ref := range refs {
		runCosign(t, bin, dir, "verify", "--key", "test.pub", "--allow-http-registry", "--insecure-ignore-tlog=true",
			"--new-bundle-format=false", ref)
	}
	cli := time.Since(start)

	c, w := median(cold), median(warm)
	perWarm := w / time.Duration(n)
	fmt.Printf("verify benchmark: %d signed images (legacy format, in-process registry on 127.0.0.1)\n", n)
	fmt.Printf("  package cold  %8.1f ms  (%.2f ms/image, median of %d)\n", ms(c), ms(c)/float64(n), len(cold))
	fmt.Printf("  package warm  %8.1f ms  (%.1f us/image, median of %d; tag HEAD + cache)\n", ms(w), float64(perWarm.Microseconds()), len(warm))
	fmt.Printf("  cosign verify %8.1f ms  (%.1f ms/image, one CLI run per image)\n", ms(cli), ms(cli)/float64(n))
	fmt.Printf("  ratio CLI/cold %.1fx (goal >= 20x): %s\n", float64(cli)/float64(c), goal(float64(cli)/float64(c) >= 20))
	fmt.Printf("  warm per image %.3f ms (goal < 1 ms): %s\n", ms(perWarm), goal(perWarm < time.Millisecond))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func goal(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
