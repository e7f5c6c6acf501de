package policy

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/policies"
)

// TestRegoUnitTests runs policies/*_test.rego through OPA's tester, compiled as strictly as the engine does.
func TestRegoUnitTests(t *testing.T) {
	ctx := context.Background()
	mods := map[string]*ast.Module{}
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if err != nil {
			return err
		}
		m, err := ast.ParseModuleWithOpts("policies/"+p, string(b), ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
		if err != nil {
			return err
		}
		mods["policies/"+p] = m
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	store := inmem.New()
	txn := storage.NewTransactionOrDie(ctx, store)
	defer store.Abort(ctx, txn)
	compiler := ast.NewCompiler().WithCapabilities(RegoCapabilities()).WithStrict(true)
	ch, err := tester.NewRunner().SetCompiler(compiler).SetStore(store).SetModules(mods).RunTests(ctx, txn)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for r := range ch {
		n++
		if !r.Pass() {
			t.Errorf("%s", r.String())
			if r.Error != nil {
				t.Errorf("  error: %v", r.Error)
			}
		}
	}
	if n < 10 {
		t.Fatalf("ran %d rego tests; expected the policies' unit tests", n)
	}
	t.Logf("%d rego tests", n)
}

func writePolicy(t *testing.T, dir, name, src string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

func loadCompose(t *testing.T, content string) *Input {
	t.Helper()
	return loadComposeWith(t, content, InputOptions{Environment: "staging", AllowedRegistries: []string{"registry.example"}})
}

func loadComposeWith(t *testing.T, content string, o InputOptions) *Input {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := compose.Load(context.Background(), compose.Options{Files: []string{p}, Stack: "shop", Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	return NewInput(st, o)
}

const goodCompose = `services:
  api:
    image: registry.example/shop/api:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    environment:
      DB_PASSWORD_FILE: /run/secrets/db_password
    healthcheck:
      test: ["CMD", "/api", "-probe"]
      interval: 2s
      retries: 3
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 64M}
      restart_policy: {condition: on-failure}
      update_config: {failure_action: rollback, monitor: 10s}
`

const badCompose = `services:
  ui:
    image: portainer/portainer-ce:2
    privileged: true
    network_mode: host
    environment:
      ADMIN_PASSWORD: hunter2-value
    ports: ["9000:9000"]
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
`

func TestEngineDecisions(t *testing.T) {
	ctx := context.Background()
	e := New(Options{})
	rep, err := e.Evaluate(ctx, loadCompose(t, goodCompose))
	if err != nil {
		t.Fatal(err)
	}
	// The only remark on a compliant stack: its signature was not verified (no registry here).
	if len(rep.Denies()) != 0 || len(rep.Warns()) != 1 || rep.Warns()[0].Rule != "signature_unknown" {
		t.Fatalf("good compose: %+v", rep.Decisions)
	}
	if err := rep.Err(); err != nil {
		t.Fatalf("Err() = %v on a clean report", err)
	}

	rep, err = e.Evaluate(ctx, loadCompose(t, badCompose))
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string]bool{}
	for _, d := range rep.Denies() {
		rules[d.Rule] = true
		if d.Service != "ui" {
			t.Errorf("decision %+v does not name the service ui", d)
		}
		if strings.Contains(d.Message, "hunter2") {
			t.Errorf("decision quotes an env value: %s", d.Message)
		}
	}
	for _, want := range []string{"privileged", "host_network", "docker_socket", "env_credentials", "published_ports", "image_digest", "image_registry", "resource_limits", "healthcheck", "update_rollback"} {
		if !rules[want] {
			t.Errorf("no deny for %s; got %v", want, rules)
		}
	}
	err = rep.Err()
	if fault.KindOf(err) != fault.Refused {
		t.Fatalf("Err() kind %v, want Refused: %v", fault.KindOf(err), err)
	}
	if e.Prepares() != 1 {
		t.Fatalf("prepared %d times for one revision", e.Prepares())
	}
}

func TestEngineExceptionLabel(t *testing.T) {
	const asked = goodCompose + `      labels:
        io.sawmill.exception.docker_socket: "the swarm UI manages services"
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock:ro
`
	// The release asks; the platform has not granted: refused, naming the grant.
	rep, err := New(Options{}).Evaluate(context.Background(), loadCompose(t, asked))
	if err != nil {
		t.Fatal(err)
	}
	denied := map[string]bool{}
	for _, d := range rep.Denies() {
		denied[d.Rule] = true
	}
	if !denied["docker_socket"] || !denied["exception_not_granted"] || !denied["host_path"] {
		t.Fatalf("an ungranted exception: %+v", rep.Denies())
	}

	// Granted by the platform (and the socket an allowed host path): the exception holds.
	in := loadComposeWith(t, asked, InputOptions{Environment: "staging", AllowedRegistries: []string{"registry.example"},
		Grants: []Grant{{Rule: "docker_socket", Service: "api"}}, AllowedHostPaths: []string{"/var/run/docker.sock"}})
	rep, err = New(Options{}).Evaluate(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Denies()) != 0 {
		t.Fatalf("an exempted docker socket mount is denied: %+v", rep.Denies())
	}
	found := false
	for _, w := range rep.Warns() {
		if w.Rule == "exception" && strings.Contains(w.Message, "the swarm UI manages services") {
			found = true
		}
	}
	if !found {
		t.Fatalf("the exception in use is not reported: %+v", rep.Warns())
	}
}

func TestEngineTeamPoliciesAndConftestException(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, "team.rego", `package main

deny_team_label contains d if {
	some svc in input.services
	not svc.labels["team"]
	d := {"msg": sprintf("%s: needs a team label", [svc.key]), "service": svc.key}
}

warn contains "a plain string warning"

exception contains ["image_digest"]
`)
	writePolicy(t, dir, "team_test.rego", "package main_test\n\ntest_x if false\n") // left out: a test file
	rep, err := New(Options{Dirs: []string{dir}}).Evaluate(context.Background(), loadCompose(t, strings.Replace(goodCompose, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range rep.Decisions {
		got = append(got, d.Kind+" "+d.Rule+" "+d.Service)
	}
	want := []string{"deny team_label api", "warn warn ", "warn signature_unknown api"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("decisions %q, want %q", got, want)
	}
	if len(rep.Excepted) != 1 || rep.Excepted[0] != "deny_image_digest" {
		t.Fatalf("excepted %v, want [deny_image_digest]", rep.Excepted)
	}
}

func TestEngineCompileErrorNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, "broken.rego", "package main\n\ndeny contains msg if {\n\tmsg := undefined_function(input)\n}\n")
	_, err := New(Options{Dirs: []string{dir}}).Evaluate(context.Background(), &Input{Stack: "s"})
	if fault.KindOf(err) != fault.Invalid {
		t.Fatalf("kind %v, want Invalid: %v", fault.KindOf(err), err)
	}
	if !strings.Contains(err.Error(), filepath.Join(dir, "broken.rego")+":4") {
		t.Fatalf("error does not name the file and line: %v", err)
	}

	dir2 := t.TempDir()
	writePolicy(t, dir2, "syntax.rego", "package main\n\ndeny contains msg if {\n")
	_, err = New(Options{Dirs: []string{dir2}}).Evaluate(context.Background(), &Input{Stack: "s"})
	if fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "syntax.rego:") {
		t.Fatalf("syntax error: kind %v: %v", fault.KindOf(err), err)
	}

	// Strict: an unused local variable is an error, not a silent pass.
	dir3 := t.TempDir()
	writePolicy(t, dir3, "strict.rego", "package main\n\ndeny contains \"x\" if {\n\tunused := 1\n\tinput.a\n}\n")
	_, err = New(Options{Dirs: []string{dir3}}).Evaluate(context.Background(), &Input{Stack: "s"})
	if fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "strict.rego:4") {
		t.Fatalf("strict: kind %v: %v", fault.KindOf(err), err)
	}
}

func TestEngineRefusesNetworkBuiltins(t *testing.T) {
	for _, call := range []string{
		`http.send({"method": "GET", "url": "http://127.0.0.1:1/"})`,
		`net.lookup_ip_addr("example.com")`,
		`opa.runtime()`,
	} {
		dir := t.TempDir()
		writePolicy(t, dir, "net.rego", "package main\n\ndeny contains sprintf(\"%v\", [x]) if {\n\tx := "+call+"\n}\n")
		_, err := New(Options{NoDefault: true, Dirs: []string{dir}}).Evaluate(context.Background(), &Input{Stack: "s"})
		if fault.KindOf(err) != fault.Invalid {
			t.Fatalf("%s: kind %v, want Invalid: %v", call, fault.KindOf(err), err)
		}
		if !strings.Contains(err.Error(), "net.rego:4") {
			t.Fatalf("%s: error does not name the file and line: %v", call, err)
		}
	}
}

func TestEnginePreparesOncePerRevision(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writePolicy(t, dir, "a.rego", "package main\n\nwarn contains \"one\" if input.stack\n")
	e := New(Options{NoDefault: true, Dirs: []string{dir}})
	in := &Input{Stack: "s"}
	for i := 0; i < 5; i++ {
		if _, err := e.Evaluate(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	if e.Prepares() != 1 {
		t.Fatalf("5 evaluations of one revision prepared %d times", e.Prepares())
	}
	rev1, _ := e.Prepare(ctx)
	writePolicy(t, dir, "a.rego", "package main\n\nwarn contains \"two\" if input.stack\n")
	rep, err := e.Evaluate(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if e.Prepares() != 2 || rep.Revision == rev1 || rep.Decisions[0].Message != "two" {
		t.Fatalf("after a change: %d prepares, revision %s (was %s), %+v", e.Prepares(), rep.Revision, rev1, rep.Decisions)
	}
}

func TestEngineBadMessage(t *testing.T) {
	dir := t.TempDir()
	writePolicy(t, dir, "a.rego", "package main\n\ndeny contains {\"text\": \"no msg\"} if input.stack\n")
	_, err := New(Options{NoDefault: true, Dirs: []string{dir}}).Evaluate(context.Background(), &Input{Stack: "s"})
	if fault.KindOf(err) != fault.Invalid {
		t.Fatalf("kind %v: %v", fault.KindOf(err), err)
	}
}

func TestEngineMissingDir(t *testing.T) {
	_, err := New(Options{Dirs: []string{filepath.Join(t.TempDir(), "nope")}}).Prepare(context.Background())
	if fault.KindOf(err) != fault.Invalid || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("kind %v: %v", fault.KindOf(err), err)
	}
}

func TestInputDeterministicAndNoSecretValues(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw.txt"), []byte("top-secret-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	content := goodCompose + `    secrets: [db_password]
  worker:
    image: registry.example/shop/worker:2
    privileged: true
    pid: host
secrets:
  db_password:
    file: ./pw.txt
`
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	var prev []byte
	for i := 0; i < 3; i++ {
		st, err := compose.Load(context.Background(), compose.Options{Files: []string{p}, Stack: "shop", Env: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewInput(st, InputOptions{Environment: "staging"}).JSON()
		if err != nil {
			t.Fatal(err)
		}
		if prev != nil && string(b) != string(prev) {
			t.Fatal("the input document differs between two runs")
		}
		prev = b
	}
	if strings.Contains(string(prev), "top-secret-value") {
		t.Fatal("the input document carries a secret value")
	}
	var doc struct {
		Services []struct {
			Key     string    `json:"key"`
			Dropped []Dropped `json:"dropped"`
			Image   Image     `json:"image"`
			Secrets []FileRef `json:"secrets"`
		} `json:"services"`
	}
	if err := json.Unmarshal(prev, &doc); err != nil {
		t.Fatal(err)
	}
	api, worker := doc.Services[0], doc.Services[1]
	if !api.Image.Pinned || api.Image.Registry != "registry.example" || api.Image.Signature.Status != SignatureUnknown {
		t.Fatalf("api image %+v", api.Image)
	}
	if len(api.Secrets) != 1 || !strings.HasSuffix(api.Secrets[0].Target, "db_password") {
		t.Fatalf("api secrets %+v", api.Secrets)
	}
	if worker.Image.Pinned || len(worker.Dropped) != 2 || worker.Dropped[0].Field != "pid" || worker.Dropped[1].Field != "privileged" {
		t.Fatalf("worker %+v", worker)
	}
}

// The daemon evaluates the same stack every cycle: under an unchanged key and revision the previous report
// comes back (equal to a fresh evaluation, its own copy) without the document being built; a changed key, a
// changed policy, the zero key, or a policy that calls a nondeterministic built-in evaluates again.
func TestEngineReusesDecisionsOfAnUnchangedKey(t *testing.T) {
	ctx := context.Background()
	e := New(Options{})
	bad, good := loadCompose(t, badCompose), loadCompose(t, goodCompose)
	builds := 0
	doc := func(in *Input) func() *Input {
		return func() *Input { builds++; return in }
	}
	k1, k2 := Key{1}, Key{2}
	first, err := e.EvaluateKeyed(ctx, "shop", k1, doc(bad))
	if err != nil {
		t.Fatal(err)
	}
	first.Decisions[0].Message = "changed by the caller"
	second, err := e.EvaluateKeyed(ctx, "shop", k1, doc(bad))
	if err != nil {
		t.Fatal(err)
	}
	if e.Memoized() != 1 || builds != 1 {
		t.Fatalf("memoized %d evaluations, built %d documents; want 1 and 1", e.Memoized(), builds)
	}
	fresh, err := New(Options{}).Evaluate(ctx, bad)
	if err != nil {
		t.Fatal(err)
	}
	second.Elapsed, fresh.Elapsed = 0, 0
	if !reflect.DeepEqual(second, fresh) || len(second.Denies()) == 0 {
		t.Fatalf("memoized report differs from a fresh evaluation:\n%+v\n%+v", second, fresh)
	}
	rep, err := e.EvaluateKeyed(ctx, "shop", k2, doc(good))
	if err != nil || e.Memoized() != 1 || builds != 2 || len(rep.Denies()) != 0 {
		t.Fatalf("another key: memoized %d, built %d, denies %v, err %v", e.Memoized(), builds, rep.Denies(), err)
	}
	for range 2 {
		if _, err := e.EvaluateKeyed(ctx, "shop", Key{}, doc(good)); err != nil {
			t.Fatal(err)
		}
	}
	if e.Memoized() != 1 || builds != 4 {
		t.Fatalf("the zero key: memoized %d, built %d; want every call evaluated", e.Memoized(), builds)
	}
	if _, err := e.Evaluate(ctx, good); err != nil || e.Memoized() != 1 {
		t.Fatalf("Evaluate: memoized %d, err %v", e.Memoized(), err)
	}

	dir := t.TempDir()
	writePolicy(t, dir, "clock.rego", "package main\n\nwarn contains \"late\" if time.now_ns() > 0\n")
	clock := New(Options{NoDefault: true, Dirs: []string{dir}})
	for range 3 {
		if _, err := clock.EvaluateKeyed(ctx, "shop", k1, doc(bad)); err != nil {
			t.Fatal(err)
		}
	}
	if clock.Memoized() != 0 {
		t.Errorf("a policy reading the clock was answered from memory %d times", clock.Memoized())
	}
	writePolicy(t, dir, "clock.rego", "package main\n\nwarn contains \"static\" if input.stack\n")
	if _, err := clock.EvaluateKeyed(ctx, "shop", k1, doc(bad)); err != nil {
		t.Fatal(err)
	}
	rep, err = clock.EvaluateKeyed(ctx, "shop", k1, doc(bad))
	if err != nil || clock.Memoized() != 1 || rep.Decisions[0].Message != "static" {
		t.Errorf("after the policy changed: memoized %d, %+v, %v", clock.Memoized(), rep, err)
	}
	writePolicy(t, dir, "clock.rego", "package main\n\nwarn contains \"changed\" if input.stack\n")
	rep, err = clock.EvaluateKeyed(ctx, "shop", k1, doc(bad))
	if err != nil || clock.Memoized() != 1 || rep.Decisions[0].Message != "changed" {
		t.Errorf("a changed policy under the same key: memoized %d, %+v, %v", clock.Memoized(), rep, err)
	}
}

func BenchmarkEvaluate100(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("services:\n")
	for i := 0; i < 100; i++ {
		sb.WriteString(strings.ReplaceAll(strings.TrimPrefix(goodCompose, "services:\n"), "  api:", "  api"+strconv.Itoa(i)+":"))
	}
	dir := b.TempDir()
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	st, err := compose.Load(context.Background(), compose.Options{Files: []string{p}, Stack: "shop", Env: []string{}})
	if err != nil {
		b.Fatal(err)
	}
	in := NewInput(st, InputOptions{})
	e := New(Options{})
	if _, err := e.Prepare(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.Evaluate(context.Background(), in); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/100, "µs/service")
}

func TestGateModes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(badCompose), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := compose.Load(ctx, compose.Options{Files: []string{p}, Stack: "shop", Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Options{})
	for _, c := range []struct {
		mode    Mode
		refused bool
		printed string
	}{
		{ModeOff, false, ""},
		{ModeWarn, false, "policy deny (warn mode: not enforced) privileged: ui:"},
		{ModeEnforce, true, "policy deny privileged: ui:"},
	} {
		var out strings.Builder
		err := (&Gate{Engine: e, Mode: c.mode, Out: &out}).Check(ctx, st)
		if got := fault.KindOf(err) == fault.Refused; got != c.refused {
			t.Errorf("%s: refused %v, want %v (%v)", c.mode, got, c.refused, err)
		}
		if c.printed == "" && out.Len() > 0 || !strings.Contains(out.String(), c.printed) {
			t.Errorf("%s: printed\n%s", c.mode, out.String())
		}
		if strings.Contains(out.String(), "hunter2") || (err != nil && strings.Contains(err.Error(), "hunter2")) {
			t.Errorf("%s: an env value was printed", c.mode)
		}
	}
	if _, err := ParseMode("strict"); err == nil {
		t.Fatal("ParseMode accepted an unknown mode")
	}
}

func TestGateSignatures(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(goodCompose), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := compose.Load(ctx, compose.Options{Files: []string{p}, Stack: "shop", Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	ref := st.Services[0].Spec.TaskTemplate.ContainerSpec.Image
	g := &Gate{Engine: New(Options{}), Mode: ModeEnforce, Input: InputOptions{AllowedRegistries: []string{"registry.example"}},
		Signatures: func(context.Context, *stack.Stack) (map[string]Signature, error) {
			return map[string]Signature{ref: {Status: SignatureUnverified, Reason: "no matching signature"}}, nil
		}}
	err = g.Check(ctx, st)
	if fault.KindOf(err) != fault.Refused || !strings.Contains(err.Error(), "[image_signature]") {
		t.Fatalf("an unverified image: %v", err)
	}
}

// A path spelled differently is the same path to the host, and to the policies.
func TestBindSourcesAreCleaned(t *testing.T) {
	for _, src := range []string{"/var/run/./docker.sock", "//var/run/docker.sock", "/var/run/../run/docker.sock", "/var/run//docker.sock/"} {
		in := loadComposeWith(t, goodCompose+`    volumes:
      - type: bind
        source: `+src+`
        target: /var/run/docker.sock
`, InputOptions{AllowedRegistries: []string{"registry.example"}, AllowedHostPaths: []string{"/srv"}})
		rep, err := New(Options{}).Evaluate(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		rules := map[string]bool{}
		for _, d := range rep.Denies() {
			rules[d.Rule] = true
		}
		if !rules["docker_socket"] || !rules["host_path"] {
			t.Errorf("%s: denies %+v, want docker_socket and host_path", src, rep.Denies())
		}
	}
}
