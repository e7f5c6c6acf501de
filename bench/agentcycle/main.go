// Command agentcycle is the daemon benchmark of bench/agent-cycle.sh: it runs `agent run` on a release of
// -services services against a swarm-mode engine and measures its no-op cycle, beside the bare Docker API calls
// such a cycle needs, timed through the same socket in the same run.
//
// Every call the agent makes goes through a counting proxy (a Unix socket in front of the engine's), so the
// API calls per cycle are counted, not estimated. The release: -services services of -image (1 replica,
// endpoint mode dnsrr), one overlay network, 2 secrets and 2 configs; the daemon runs with its own lease name,
// signatures off (the image is a local build), the default policies in warn mode (they are evaluated every
// cycle, and refuse nothing), -interval between cycles and no jitter.
//
// Measured after the first cycle (the deploy, not counted):
//   - the no-op cycle: the daemon's own cycle duration (its sawmill_sync_duration_seconds histogram: mean; its
//     log: median), and its API calls per cycle by method and path;
//   - the bare calls: the four list calls (services, networks, secrets, configs) at once, as the agent makes
//     them, through the same proxy (median), one at a time (sum of medians), and the six calls of a leased
//     cycle; taken in the daemon's interval after each of the first window's cycles (the three kinds in
//     turn), so that both are measured on the same machine at the same time and neither waits on the other;
//   - RSS (VmRSS, VmHWM of /proc) and goroutines (go_goroutines) after each of -cycles (e.g. 100,1000).
//
// The stack and the lease are removed at the end. Output: a report on stdout and, with -row FILE, the table
// rows of bench/run.sh appended to FILE.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moby/moby/client"
	"golang.org/x/sync/errgroup"

	"github.com/sabeiro/sawmill/internal/swarm"
)

func main() {
	agent := flag.String("agent", "", "the agent binary")
	services := flag.Int("services", 50, "services in the stack")
	image := flag.String("image", "sawmill-bench/svc:1", "the image every service runs (local)")
	cyclesFlag := flag.String("cycles", "100,1000", "report after these many no-op cycles (ascending)")
	interval := flag.Duration("interval", 20*time.Millisecond, "the daemon's poll interval")
	row := flag.String("row", "", "append the table rows (TSV: measure, peer, ours, goal, verdict) to this file")
	gogc := flag.String("gogc", "", "GOGC for the daemon (empty: the agent's default)")
	lease := flag.Bool("lease", true, "the daemon takes a lease (lease.disabled: false); false measures the cycle without its two lease calls")
	flag.Parse()
	if *agent == "" {
		log.Fatal("-agent is required")
	}
	var cycles []int
	for _, s := range strings.Split(*cyclesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			log.Fatalf("-cycles %q", *cyclesFlag)
		}
		cycles = append(cycles, n)
	}
	sort.Ints(cycles)
	engine := os.Getenv("SAWMILL_TEST_DOCKER_HOST")
	if engine == "" {
		engine = os.Getenv("DOCKER_HOST")
	}
	if !strings.HasPrefix(engine, "unix://") {
		log.Fatalf("the engine must be a unix:// socket (SAWMILL_TEST_DOCKER_HOST), got %q", engine)
	}
	b := &bench{agent: *agent, services: *services, image: *image, interval: *interval, engineSock: strings.TrimPrefix(engine, "unix://"), gogc: *gogc, noLease: !*lease}
	err := b.run(cycles)
	cerr := b.cleanup()
	if err != nil {
		log.Fatal(err)
	}
	if cerr != nil {
		log.Fatal(cerr)
	}
	b.report(os.Stdout)
	if *row != "" {
		if err := b.rows(*row); err != nil {
			log.Fatal(err)
		}
	}
}

type bench struct {
	agent, image, engineSock, gogc string
	services                       int
	interval                       time.Duration
	noLease                        bool

	work, stack, lease string
	proxy              *countingProxy
	dc                 *client.Client
	cmd                *exec.Cmd
	logs               *logTail
	metricsAddr        string

	// results
	cycleMean, cycleMedian time.Duration
	callsPerCycle          float64
	callsByPath            map[string]float64
	bareParallel, bareSeq  time.Duration
	bareLeased             time.Duration // the lease's two calls, then the four lists
	samples                []sample
	load                   string
	measuredCycles         int
}

type sample struct {
	cycles     int
	rss, hwm   int64
	goroutines int
}

func (b *bench) run(cycles []int) error {
	var err error
	b.load = loadavg()
	if b.work, err = os.MkdirTemp("", "sawmill-cycle-bench."); err != nil {
		return err
	}
	suffix := strconv.FormatInt(time.Now().UnixNano()%1e6, 36)
	b.stack = "sawbench-cycle-" + suffix
	b.lease = "sawbench-lease-" + suffix
	if b.proxy, err = newCountingProxy(filepath.Join(b.work, "docker.sock"), b.engineSock); err != nil {
		return err
	}
	// The bare calls' client has the agent's connection pool (swarm.Pool), and marks its calls: they are made
	// between the daemon's cycles, and are not the daemon's.
	opts := append(swarm.Pool(), client.WithHost("unix://"+b.proxy.path), client.WithHTTPHeaders(map[string]string{bareHeader: "1"}),
		client.WithAPIVersionNegotiation())
	if b.dc, err = client.New(opts...); err != nil {
		return err
	}
	rel, err := b.writeRelease()
	if err != nil {
		return err
	}
	if err := b.start(rel); err != nil {
		return err
	}
	ctx := context.Background()

	// The first cycle deploys and waits for convergence; the no-op cycles come after it.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		m, err := b.metrics()
		// The metric can count the cycle before its log line has come through the pipe: wait for both.
		if err == nil && m["sawmill_sync_duration_seconds_count"] >= 1 && b.logs.lastOutcome() != "" {
			if o := b.logs.lastOutcome(); o != "success" {
				return fmt.Errorf("first cycle: outcome %q: %s", o, b.logs.tail())
			}
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the first cycle did not end within 5 minutes: %s", b.logs.tail())
		}
		if b.cmd.ProcessState != nil {
			return fmt.Errorf("agent exited: %s", b.logs.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	m0, _ := b.metrics()
	writes0 := b.proxy.writes.Load()
	logged0 := b.logs.cycles()
	n0 := int(m0["sawmill_sync_duration_seconds_count"])
	b.logs.resetDurations()

	// The first window: the cycles measured, and in the daemon's interval after each (once its line has come),
	// one bare measurement, the three kinds in turn. Interleaved, the two see the same machine (its speed
	// drifts over minutes); made in the gaps, neither waits on the other's calls.
	bare, err := b.newBare(ctx)
	if err != nil {
		return err
	}
	for k := 0; b.logs.cycles()-logged0 < cycles[0]; k++ {
		select {
		case <-b.logs.ended:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no cycle within 5 s: %s", b.logs.tail())
		}
		if err := bare.one(ctx, k%3); err != nil {
			return err
		}
	}
	b.bareParallel, b.bareSeq, b.bareLeased = bare.medians()

	first := true
	for _, target := range cycles {
		deadline := time.Now().Add(time.Duration(target)*(b.interval+time.Second) + time.Minute)
		for {
			m, err := b.metrics()
			if err != nil {
				return err
			}
			done := int(m["sawmill_sync_duration_seconds_count"]) - n0
			if done >= target {
				st, err := procStatus(b.cmd.Process.Pid)
				if err != nil {
					return err
				}
				b.samples = append(b.samples, sample{cycles: done, rss: st["VmRSS"], hwm: st["VmHWM"], goroutines: int(m["go_goroutines"])})
				if first {
					// the cycle figures come from the first window, measured before the long run
					first = false
					_, byPath1 := b.proxy.snapshot()
					b.measuredCycles = done
					b.callsByPath = b.logs.calls(logged0, b.logs.cycles())
					b.callsPerCycle = 0
					for _, v := range b.callsByPath {
						b.callsPerCycle += v
					}
					b.cycleMean = time.Duration((m["sawmill_sync_duration_seconds_sum"] - m0["sawmill_sync_duration_seconds_sum"]) / float64(done) * float64(time.Second))
					b.cycleMedian = b.logs.medianDuration()
					if o := b.logs.lastOutcome(); o != "success" {
						return fmt.Errorf("no-op cycles: outcome %q: %s", o, b.logs.tail())
					}
					if w := b.proxy.writes.Load() - writes0; w > 0 {
						return fmt.Errorf("the no-op cycles made %d write calls besides the lease: %v", w, byPath1)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d cycles within the time allowed: %s", done, target, b.logs.tail())
			}
			if b.cmd.ProcessState != nil {
				return fmt.Errorf("agent exited: %s", b.logs.tail())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if o := b.logs.lastOutcome(); o != "success" {
		return fmt.Errorf("last cycle: outcome %q: %s", o, b.logs.tail())
	}
	return nil
}

// bareSampler times the bare calls of a cycle through the proxy: the four list calls at once, as the agent
// makes them; the four one at a time (the sum of each call's median); and the six calls of a leased cycle (the
// lease's list and update, on a lease of its own, then the four lists at once).
type bareSampler struct {
	calls []func() error
	lease *swarm.Lease
	par   []time.Duration
	seq   [][]time.Duration
	lsd   []time.Duration
}

func (b *bench) newBare(ctx context.Context) (*bareSampler, error) {
	s := &bareSampler{calls: []func() error{
		func() error { _, err := b.dc.ServiceList(ctx, client.ServiceListOptions{}); return err },
		func() error { _, err := b.dc.NetworkList(ctx, client.NetworkListOptions{}); return err },
		func() error { _, err := b.dc.SecretList(ctx, client.SecretListOptions{}); return err },
		func() error { _, err := b.dc.ConfigList(ctx, client.ConfigListOptions{}); return err },
	}}
	s.seq = make([][]time.Duration, len(s.calls))
	s.lease = &swarm.Lease{Client: b.dc, Holder: "agentcycle-bare", TTL: 30 * time.Second, Name: b.lease + "-bare"}
	if _, _, err := s.lease.Acquire(ctx); err != nil { // creates it
		return nil, err
	}
	return s, nil
}

func (s *bareSampler) lists() error {
	var g errgroup.Group
	for _, c := range s.calls {
		g.Go(c)
	}
	return g.Wait()
}

// one takes one sample of kind: 0 the lists at once, 1 one at a time, 2 the leased cycle.
func (s *bareSampler) one(ctx context.Context, kind int) error {
	t0 := time.Now()
	switch kind {
	case 0:
		if err := s.lists(); err != nil {
			return err
		}
		s.par = append(s.par, time.Since(t0))
	case 1:
		for i, c := range s.calls {
			t0 := time.Now()
			if err := c(); err != nil {
				return err
			}
			s.seq[i] = append(s.seq[i], time.Since(t0))
		}
	case 2:
		held, _, err := s.lease.Acquire(ctx)
		if err != nil || !held {
			return fmt.Errorf("bare lease: held %t, %v", held, err)
		}
		if err := s.lists(); err != nil {
			return err
		}
		s.lsd = append(s.lsd, time.Since(t0))
	}
	return nil
}

func (s *bareSampler) medians() (parallel, sequential, leased time.Duration) {
	for _, l := range s.seq {
		sequential += median(l)
	}
	return median(s.par), sequential, median(s.lsd)
}

func (b *bench) writeRelease() (string, error) {
	rel := filepath.Join(b.work, "release")
	dir := filepath.Join(rel, "stacks", b.stack)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var y strings.Builder
	y.WriteString("services:\n")
	for i := 1; i <= b.services; i++ {
		fmt.Fprintf(&y, "  svc%02d:\n    image: %s\n    environment:\n      MESSAGE: svc%02d\n    networks: [bench]\n", i, b.image, i)
		switch i % 10 {
		case 1:
			y.WriteString("    secrets: [secret1]\n")
		case 2:
			y.WriteString("    secrets: [secret2, {source: secret1, target: other}]\n")
		case 3:
			y.WriteString("    configs: [{source: config1, target: /config1.txt}]\n")
		case 4:
			y.WriteString("    configs: [{source: config2, target: /config2.txt}]\n")
		}
		y.WriteString("    deploy:\n      endpoint_mode: dnsrr\n      replicas: 1\n")
	}
	y.WriteString("networks:\n  bench:\n    driver: overlay\nsecrets:\n  secret1: {file: ./secret1.txt}\n  secret2: {file: ./secret2.txt}\n")
	y.WriteString("configs:\n  config1: {file: ./config1.txt}\n  config2: {file: ./config2.txt}\n")
	files := map[string]string{
		"compose.yaml": y.String(),
		"secret1.txt":  fmt.Sprintf("bench secret 1 %d\n", time.Now().UnixNano()),
		"secret2.txt":  fmt.Sprintf("bench secret 2 %d\n", time.Now().UnixNano()),
		"config1.txt":  "bench config 1\n",
		"config2.txt":  "bench config 2\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return "", err
		}
	}
	m := map[string]any{
		"schema_version": 1, "project": "sawmill/bench", "commit": strings.Repeat("0", 40), "ref": "main",
		"pipeline": map[string]any{"id": 1, "url": ""}, "registry": "", "channel": "release-main",
		"images": map[string]any{},
		"stacks": map[string]any{b.stack: map[string]any{"files": []string{"stacks/" + b.stack + "/compose.yaml"}}},
	}
	j, _ := json.Marshal(m)
	return rel, os.WriteFile(filepath.Join(rel, "release.json"), j, 0o644)
}

func (b *bench) start(rel string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	b.metricsAddr = fmt.Sprintf("127.0.0.1:%d", port)
	cfg := fmt.Sprintf(`environment: bench
source: dir
dir: %s
stacks: [%s]
interval: %s
jitter: 0
timeout: 4m
listen: %s
state_dir: %s
lease: {name: %s, ttl: 30s, disabled: %t}
policy_mode: warn
skip_verify: true
log_format: json
`, rel, b.stack, b.interval, b.metricsAddr, filepath.Join(b.work, "state"), b.lease, b.noLease)
	cfgPath := filepath.Join(b.work, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	b.cmd = exec.Command(b.agent, "run", "--config", cfgPath)
	env := []string{"DOCKER_HOST=unix://" + b.proxy.path, "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if b.gogc != "" {
		env = append(env, "GOGC="+b.gogc)
	}
	b.cmd.Env = env
	stderr, err := b.cmd.StderrPipe()
	if err != nil {
		return err
	}
	b.cmd.Stdout = io.Discard
	b.logs = newLogTail(stderr, func() map[string]int64 { _, m := b.proxy.snapshot(); return m })
	if err := b.cmd.Start(); err != nil {
		return err
	}
	go func() { _ = b.cmd.Wait() }()
	return nil
}

func (b *bench) metrics() (map[string]float64, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+b.metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// Uncompressed: the benchmark reads the metrics several times a second, and the daemon's gzip writer for
	// each read (600 KB) was a tenth of its garbage, a load a scrape every 15 s never puts on it.
	req.Header.Set("Accept-Encoding", "identity")
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// cleanup stops the daemon and removes the stack's objects and the lease, waiting until they are gone.
func (b *bench) cleanup() error {
	if b.cmd != nil && b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		for i := 0; i < 100 && b.cmd.ProcessState == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if b.cmd.ProcessState == nil {
			_ = b.cmd.Process.Kill()
		}
	}
	var errs []error
	if b.dc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		errs = append(errs, removeStack(ctx, b.dc, b.stack, b.lease))
		b.dc.Close()
	}
	if b.proxy != nil {
		b.proxy.close()
	}
	if b.work != "" {
		errs = append(errs, os.RemoveAll(b.work))
	}
	return errors.Join(errs...)
}

func removeStack(ctx context.Context, dc *client.Client, stack, lease string) error {
	ns := make(client.Filters).Add("label", "com.docker.stack.namespace="+stack)
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: ns})
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		_, _ = dc.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{})
	}
	// Networks can go once the tasks' containers are gone.
	for {
		tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("label", "com.docker.stack.namespace="+stack)})
		if err != nil {
			return err
		}
		cs, err := dc.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", "com.docker.stack.namespace="+stack)})
		if err != nil {
			return err
		}
		if len(tasks.Items) == 0 && len(cs.Items) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stack %s: tasks still there", stack)
		case <-time.After(500 * time.Millisecond):
		}
	}
	var errs []error
	for {
		nets, err := dc.NetworkList(ctx, client.NetworkListOptions{Filters: ns})
		if err != nil {
			return err
		}
		if len(nets.Items) == 0 {
			break
		}
		for _, n := range nets.Items {
			_, _ = dc.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{})
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stack %s: networks still there", stack)
		case <-time.After(500 * time.Millisecond):
		}
	}
	secrets, err := dc.SecretList(ctx, client.SecretListOptions{Filters: ns})
	if err != nil {
		return err
	}
	for _, s := range secrets.Items {
		if _, err := dc.SecretRemove(ctx, s.ID, client.SecretRemoveOptions{}); err != nil {
			errs = append(errs, err)
		}
	}
	configs, err := dc.ConfigList(ctx, client.ConfigListOptions{})
	if err != nil {
		return err
	}
	for _, c := range configs.Items {
		// The lease's own configs beside it too (<lease>.history-<n>, the pin, requests and answers).
		if c.Spec.Labels["com.docker.stack.namespace"] == stack || c.Spec.Name == lease || c.Spec.Name == lease+"-bare" || strings.HasPrefix(c.Spec.Name, lease+".") {
			if _, err := dc.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (b *bench) report(w io.Writer) {
	lease := "with its lease"
	if b.noLease {
		lease = "lease disabled"
	}
	fmt.Fprintf(w, "agent run, no-op cycle: %d services, 1 overlay network, 2 secrets, 2 configs; interval %s; %s; load at start %s, at end %s\n",
		b.services, b.interval, lease, b.load, loadavg())
	fmt.Fprintf(w, "  no-op cycle (daemon's own timing, %d cycles): median %s, mean %s\n", b.measuredCycles, ms(b.cycleMedian), ms(b.cycleMean))
	fmt.Fprintf(w, "  bare list calls through the same socket: at once %s (median of the four together), one at a time %s\n", ms(b.bareParallel), ms(b.bareSeq))
	fmt.Fprintf(w, "  the six calls of a leased cycle (lease list + update, then the four lists at once): %s\n", ms(b.bareLeased))
	fmt.Fprintf(w, "  cycle / bare calls at once: %.2f (goal <= 2); cycle / the six calls: %.2f\n", b.ratio(), float64(b.cycleMedian)/float64(max(b.bareLeased, 1)))
	fmt.Fprintf(w, "  API calls per cycle: %.2f (goal <= 6)\n", b.callsPerCycle)
	var keys []string
	for k := range b.callsByPath {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "    %-40s %.2f\n", k, b.callsByPath[k])
	}
	for _, s := range b.samples {
		fmt.Fprintf(w, "  after %5d cycles: RSS %.1f MB (peak %.1f MB), %d goroutines\n", s.cycles, mb(s.rss), mb(s.hwm), s.goroutines)
	}
}

func (b *bench) ratio() float64 {
	if b.bareParallel == 0 {
		return 0
	}
	return float64(b.cycleMedian) / float64(b.bareParallel)
}

// rows appends the rows of bench/run.sh's table (tab-separated: measure, peer, ours, goal, verdict).
func (b *bench) rows(path string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "not met"
	}
	fmt.Fprintf(f, "agent run no-op cycle, %d services\t4 lists %s (6 calls with the lease %s)\t%s, %.1f API calls\t<= 2x, <= 6 calls\t%s (%.2fx the lists, %.2fx the 6 calls; load %s)\n",
		b.services, ms(b.bareParallel), ms(b.bareLeased), ms(b.cycleMedian), b.callsPerCycle, verdict(b.ratio() <= 2 && b.callsPerCycle <= 6), b.ratio(),
		float64(b.cycleMedian)/float64(max(b.bareLeased, 1)), b.load)
	var parts []string
	flat := true
	var first sample
	for i, s := range b.samples {
		parts = append(parts, fmt.Sprintf("%.1f MB after %d", mb(s.rss), s.cycles))
		if i == 0 {
			first = s
		} else if float64(s.rss) > 1.2*float64(first.rss) || s.goroutines > first.goroutines+2 {
			flat = false
		}
	}
	ok := len(b.samples) > 0 && mb(b.samples[0].rss) < 60 && flat
	last := b.samples[len(b.samples)-1]
	fmt.Fprintf(f, "agent run idle RSS, goroutines\t-\t%s; %d goroutines\t< 60 MB, flat\t%s\n", strings.Join(parts, ", "), last.goroutines, verdict(ok))
	return nil
}

// countingProxy forwards HTTP over a Unix socket to the engine's socket and counts the requests.
type countingProxy struct {
	path   string
	ln     net.Listener
	srv    *http.Server
	total  atomic.Int64
	writes atomic.Int64 // writes other than the lease's config update
	mu     sync.Mutex
	byPath map[string]int64
}

// bareHeader marks the benchmark's own calls, which the proxy passes on without counting.
const bareHeader = "X-Sawmill-Bench-Bare"

var versionPrefix = regexp.MustCompile(`^/v[0-9.]+`)
var textCycle = regexp.MustCompile(`msg=cycle outcome=(\S+) .*duration=(\S+)`)
var idPart = regexp.MustCompile(`/[a-z0-9]{25}(/|$)`)

func newCountingProxy(path, engine string) (*countingProxy, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	p := &countingProxy{path: path, ln: ln, byPath: map[string]int64{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: "docker"})
			r.Out.Host = "docker"
		},
		Transport: &http.Transport{MaxIdleConns: 16, MaxIdleConnsPerHost: 16, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", engine)
		}},
		FlushInterval: -1,
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(bareHeader) != "" {
			rp.ServeHTTP(w, r)
			return
		}
		path := versionPrefix.ReplaceAllString(r.URL.Path, "")
		path = idPart.ReplaceAllString(path, "/{id}$1")
		key := r.Method + " " + path
		p.total.Add(1)
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !(strings.HasPrefix(path, "/configs/") && strings.HasSuffix(path, "/update")) {
			p.writes.Add(1)
		}
		p.mu.Lock()
		p.byPath[key]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *countingProxy) snapshot() (int64, map[string]int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[string]int64, len(p.byPath))
	for k, v := range p.byPath {
		m[k] = v
	}
	return p.total.Load(), m
}

func (p *countingProxy) close() { _ = p.srv.Close() }

// logTail reads the daemon's JSON log: cycle outcomes and durations, and the last lines for errors.
type logTail struct {
	mu        sync.Mutex
	lines     []string
	outcome   string
	durations []time.Duration
	// at is the proxy's count at the end of every cycle (the next cycle's calls start after the interval)
	at     []map[string]int64
	counts func() map[string]int64
	// ended receives (without blocking the reader) when a cycle's line has come
	ended chan struct{}
}

func newLogTail(r io.Reader, counts func() map[string]int64) *logTail {
	l := &logTail{counts: counts, ended: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			var rec struct {
				Msg      string `json:"msg"`
				Outcome  string `json:"outcome"`
				Duration int64  `json:"duration"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				// an agent that logs text (older builds ignore log_format in the config file)
				if m := textCycle.FindStringSubmatch(line); m != nil {
					rec.Msg, rec.Outcome = "cycle", m[1]
					d, _ := time.ParseDuration(m[2])
					rec.Duration = int64(d)
				}
			}
			l.mu.Lock()
			if rec.Msg == "cycle" {
				l.outcome = rec.Outcome
				l.durations = append(l.durations, time.Duration(rec.Duration))
				l.at = append(l.at, l.counts())
			}
			if len(l.lines) >= 20 {
				l.lines = l.lines[1:]
			}
			l.lines = append(l.lines, line)
			l.mu.Unlock()
			if rec.Msg == "cycle" {
				select {
				case l.ended <- struct{}{}:
				default:
				}
			}
		}
	}()
	return l
}

func (l *logTail) lastOutcome() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.outcome
}

func (l *logTail) resetDurations() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.durations = nil
}

func (l *logTail) medianDuration() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return median(slices.Clone(l.durations))
}

// calls returns the API calls per cycle between the end of cycle from and the end of cycle to (1-based),
// by method and path.
func (l *logTail) calls(from, to int) map[string]float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]float64{}
	if from < 1 || to > len(l.at) || to <= from {
		return out
	}
	a, b := l.at[from-1], l.at[to-1]
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			out[k] = float64(d) / float64(to-from)
		}
	}
	return out
}

func (l *logTail) cycles() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.at)
}

func (l *logTail) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			out[k] = n * 1024
		}
	}
	return out, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
func mb(n int64) float64        { return float64(n) / (1 << 20) }
