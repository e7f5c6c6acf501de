package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	mobyswarm "github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/verify"
)

// The objects `agent install` creates from the operator's files, which stacks/agent/compose.yaml names as
// external: they are never part of a release, and the agent never prunes them.
const (
	installConfigName  = "sawmill-agent-config"
	installGitLabToken = "sawmill-agent-gitlab-token"
	installWebhookName = "sawmill-agent-webhook-token"
	// labelInstalled marks them (and only them): `agent uninstall` removes what carries it.
	labelInstalled = "io.sawmill.installed-by"
	// labelInstallHash is the HMAC (the swarm's name key) of an object's content: a re-install with the same
	// files changes nothing, and a token's value cannot be tested against guesses from the label.
	labelInstallHash = "io.sawmill.install-hash"
)

// installCmd is `agent install`: the agent as a Swarm service on the managers, from a workstation or a
// manager (the usual Docker environment names the engine). It creates the agent's configuration and tokens
// as Swarm objects, then runs one cycle of the agent limited to its own stack: the release of the
// configured environment is fetched, the agent image's signature verified against the trust policy being
// installed, the stack checked against the policies with the operator's grants, applied and converged.
func installCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "install --config agent.yaml [--token-file FILE] [--webhook-token-file FILE]",
		Short: "Install the agent as a Swarm service on the managers (stacks/agent of the environment's release)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, _ := cmd.Flags().GetString("config")
			if path == "" {
				return usageError{errors.New("give the agent's configuration with --config agent.yaml")}
			}
			cfg, err := loadConfig(v, cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(d, cfg.LogLevel, cfg.LogFormat)
			if err != nil {
				return err
			}
			name, _ := cmd.Flags().GetString("stack")
			tokenFile, _ := cmd.Flags().GetString("token-file")
			hookFile, _ := cmd.Flags().GetString("webhook-token-file")
			if cfg.Source == "dir" {
				return usageError{fmt.Errorf("config %s: source dir: a directory of this machine does not reach the agent's service; use source gitlab (or git), or run `agent run` on the host", path)}
			}
			if len(cfg.Policies) > 0 {
				return usageError{fmt.Errorf("config %s: policies: the agent's image carries the default policies only; a policy directory of the host does not reach the service (leave policies empty)", path)}
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return usageError{fmt.Errorf("config %s: %w", path, err)}
			}
			shipped, err := inlineTrustKeys(raw, filepath.Dir(path))
			if err != nil {
				return usageError{fmt.Errorf("config %s: %w", path, err)}
			}
			token, err := readToken(tokenFile, cfg.GitLab.TokenEnv)
			if err != nil {
				return usageError{fmt.Errorf("--token-file: %w", err)}
			}
			switch {
			case token == "" && cfg.Source == "gitlab":
				return usageError{fmt.Errorf("the GitLab token: give --token-file or set $%s", cfg.GitLab.TokenEnv)}
			case token == "":
				token = "none" // source git: the secret the stack mounts is not read
			}
			d.redact.Add(token)
			hook, err := readToken(hookFile, cfg.Webhook.TokenEnv)
			if err != nil {
				return usageError{fmt.Errorf("--webhook-token-file: %w", err)}
			}
			generated := hook == ""
			if generated {
				// No webhook token: a random one nobody knows, so the webhook refuses every call (the agent polls);
				// one made by an earlier install is kept.
				b := make([]byte, 32)
				_, _ = rand.Read(b)
				hook = hex.EncodeToString(b)
				log.Info("no webhook token given: the agent polls every interval (give --webhook-token-file to let GitLab trigger it)")
			}
			d.redact.Add(hook)

			c, err := d.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			key, err := swarm.NameKey(ctx, c, true)
			if err != nil {
				return err
			}
			for _, o := range []installObject{
				{kind: "config", name: installConfigName, data: shipped},
				{kind: "secret", name: installGitLabToken, data: []byte(token)},
				{kind: "secret", name: installWebhookName, data: []byte(hook), keep: generated},
			} {
				if err := o.ensure(ctx, c, key, name); err != nil {
					return err
				}
			}

			// One cycle of the agent, on its own stack only, from this machine: the release's stacks/agent.
			dir, err := os.MkdirTemp("", "sawmill-install")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			local := *cfg
			local.StateDir, local.GitLab.TokenFile = dir, ""
			// Verify with the trust policy being installed (its keys inlined), as the service will.
			var shippedDoc struct {
				Trust *verify.TrustPolicy `yaml:"trust"`
			}
			if err := yaml.Unmarshal(shipped, &shippedDoc); err != nil {
				return usageError{fmt.Errorf("config %s: trust: %w", path, err)}
			}
			local.Trust = shippedDoc.Trust
			local.GitLab.TokenEnv = "SAWMILL_INSTALL_TOKEN_UNUSED"
			flow, err := newFlow(&local, c, log)
			if err != nil {
				return err
			}
			loop := &reconcile.Loop{
				Environment: cfg.Environment,
				Stacks:      []string{name},
				Flow:        flow,
				Env:         cfg.releaseEnv(os.LookupEnv),
				Redact:      d.redact,
				NameKey:     func(context.Context) ([]byte, error) { return key, nil },
				Log:         log,
				Show:        func(cy *reconcile.Cycle) { printRun(d.stdout, cy, flow.PolicyMode) },
			}
			if err := setSourceWithToken(loop, &local, token, d); err != nil {
				return err
			}
			loop.Reporter = nil // the running agent reports the release; install reports nothing
			if !cfg.Lease.Disabled {
				host, _ := os.Hostname()
				loop.Lease = &swarm.Lease{Client: c, Holder: "agent-install/" + host, TTL: cfg.Lease.TTL, Name: cfg.Lease.Name}
			}
			if err := loop.Init(); err != nil {
				return usageError{err}
			}
			rec := loop.Cycle(ctx)
			loop.ReleaseLease()
			switch {
			case rec.Outcome == outcome.Standby:
				fmt.Fprintf(d.stdout, "an agent already acts on this swarm (%s): it follows its own stack %s in the release\n", rec.Reason, name)
				return nil
			case rec.Outcome != outcome.Success:
				return exitError{code: rec.Outcome.Row().Exit, err: fmt.Errorf("install: %s: %s", rec.Outcome, rec.Reason)}
			}
			fmt.Fprintf(d.stdout, "installed: the agent runs as the service %s_agent on the managers and follows the %s releases of %s (release %s)\n",
				name, cfg.Environment, cfg.GitLab.Project, rec.Release)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("config", "", "the agent's configuration (agent.yaml), as `agent run` reads it; shipped as the Swarm config "+installConfigName)
	f.String("token-file", "", "file holding the GitLab token (default: $SAWMILL_GITLAB_TOKEN, or gitlab.token_env); shipped as the Swarm secret "+installGitLabToken)
	f.String("webhook-token-file", "", "file holding the webhook's token (default: $SAWMILL_WEBHOOK_TOKEN); shipped as the Swarm secret "+installWebhookName)
	f.String("stack", "agent", "the agent's stack in the release (stacks/agent)")
	return cmd
}

// setSourceWithToken is setSource with the token given rather than read from the configuration.
func setSourceWithToken(loop *reconcile.Loop, cfg *Config, token string, d deps) error {
	f, err := os.CreateTemp(cfg.StateDir, "token")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(token); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	c := *cfg
	c.GitLab.TokenFile = f.Name()
	return setSource(loop, &c, d.redact)
}

// readToken reads a token from file, else from the environment variable env.
func readToken(file, env string) (string, error) {
	if file == "" {
		return os.Getenv(env), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// inlineTrustKeys returns the configuration with every trust authority's key file replaced by its PEM, so
// that the agent in its container verifies with the keys the operator named here. A keyless authority's
// trusted_root file cannot be shipped this way: it is refused.
func inlineTrustKeys(raw []byte, base string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return raw, nil
	}
	changed := false
	rules := lookup(lookup(doc.Content[0], "trust"), "rules")
	if rules == nil {
		return raw, nil
	}
	for _, rule := range rules.Content {
		auths := lookup(rule, "authorities")
		if auths == nil {
			continue
		}
		for _, a := range auths.Content {
			if kl := lookup(a, "keyless"); kl != nil {
				if tr := lookup(kl, "trusted_root"); tr != nil && tr.Value != "" {
					return nil, fmt.Errorf("line %d: trust: keyless trusted_root %s is a file of this machine, which the agent's service cannot read: use a key authority", tr.Line, tr.Value)
				}
			}
			k := lookup(a, "key")
			if k == nil || k.Value == "" || strings.Contains(k.Value, "-----BEGIN") {
				continue
			}
			p := k.Value
			if !filepath.IsAbs(p) {
				p = filepath.Join(base, p)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, fmt.Errorf("line %d: trust key: %w", k.Line, err)
			}
			if !strings.Contains(string(b), "-----BEGIN") {
				return nil, fmt.Errorf("line %d: trust key %s: not a PEM file", k.Line, p)
			}
			k.Value, k.Style, changed = string(b), yaml.LiteralStyle, true
		}
	}
	if !changed {
		return raw, nil
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, err
	}
	return append([]byte("# written by agent install (trust keys inlined)\n"), out...), nil
}

// lookup returns the value of key in the mapping n, or nil.
func lookup(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// installObject is a Swarm config or secret `agent install` creates.
type installObject struct {
	kind, name string
	data       []byte
	// keep an existing object made by install whatever its content (a generated token).
	keep bool
}

// ensure creates the object, or keeps it when it holds the same content; a changed content replaces it
// while no agent runs, and is refused while one does (Swarm cannot change a config or secret in use).
func (o installObject) ensure(ctx context.Context, c swarm.Client, key []byte, stackName string) error {
	mac := hmac.New(sha256.New, key)
	mac.Write(o.data)
	sum := hex.EncodeToString(mac.Sum(nil))
	labels := map[string]string{labelInstalled: "agent-install", labelInstallHash: sum}
	id, cur, err := o.find(ctx, c)
	if err != nil {
		return err
	}
	if id != "" {
		if cur[labelInstallHash] == sum || (o.keep && cur[labelInstalled] != "") {
			return nil
		}
		if cur[labelInstalled] == "" {
			return fmt.Errorf("%s %s exists and was not made by agent install: remove it or pick another swarm", o.kind, o.name)
		}
		if err := o.remove(ctx, c, id); err != nil {
			return fmt.Errorf("%s %s changed, and the running agent uses it: run `agent uninstall` (the platform's stacks keep running), then install again: %w", o.kind, o.name, err)
		}
	}
	var cerr error
	switch o.kind {
	case "config":
		_, cerr = c.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: mobyswarm.ConfigSpec{Annotations: mobyswarm.Annotations{Name: o.name, Labels: labels}, Data: o.data}})
	default:
		_, cerr = c.SecretCreate(ctx, client.SecretCreateOptions{Spec: mobyswarm.SecretSpec{Annotations: mobyswarm.Annotations{Name: o.name, Labels: labels}, Data: o.data}})
	}
	if cerr != nil {
		return fmt.Errorf("create %s %s: %w", o.kind, o.name, cerr)
	}
	return nil
}

func (o installObject) find(ctx context.Context, c swarm.Client) (string, map[string]string, error) {
	f := make(client.Filters).Add("name", o.name)
	if o.kind == "config" {
		l, err := c.ConfigList(ctx, client.ConfigListOptions{Filters: f})
		if err != nil {
			return "", nil, fmt.Errorf("list configs: %w", err)
		}
		for _, x := range l.Items {
			if x.Spec.Name == o.name {
				return x.ID, x.Spec.Labels, nil
			}
		}
		return "", nil, nil
	}
	l, err := c.SecretList(ctx, client.SecretListOptions{Filters: f})
	if err != nil {
		return "", nil, fmt.Errorf("list secrets: %w", err)
	}
	for _, x := range l.Items {
		if x.Spec.Name == o.name {
			return x.ID, x.Spec.Labels, nil
		}
	}
	return "", nil, nil
}

func (o installObject) remove(ctx context.Context, c swarm.Client, id string) error {
	if o.kind == "config" {
		_, err := c.ConfigRemove(ctx, id, client.ConfigRemoveOptions{})
		return err
	}
	_, err := c.SecretRemove(ctx, id, client.SecretRemoveOptions{})
	return err
}

// uninstallCmd is `agent uninstall`: the agent's stack and the objects install made go; every other stack
// keeps running (nothing else is touched). The state volume stays on its node (docker volume rm
// <stack>_state there).
func uninstallCmd(d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "uninstall [--stack agent] [--lease-name NAME --lease-ttl TTL]",
		Short: "Remove the agent's service and the objects install made; the platform's stacks keep running",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, _ := cmd.Flags().GetString("stack")
			timeout, _ := cmd.Flags().GetDuration("timeout")
			leaseName, _ := cmd.Flags().GetString("lease-name")
			ttl, _ := cmd.Flags().GetDuration("lease-ttl")
			c, err := d.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			// The agent would put its own service back: first the lease is taken from every agent, and
			// uninstall waits until the one that acted has seen that (it renews every third of the TTL).
			host, _ := os.Hostname()
			holder := "agent-uninstall/" + host
			if err := seizeLease(ctx, c, leaseName, holder, timeout+ttl); err != nil {
				return err
			}
			defer func() {
				rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer rcancel()
				_ = (&swarm.Lease{Client: c, Name: leaseName, Holder: holder}).Release(rctx)
			}()
			fmt.Fprintf(d.stdout, "took the lease %s: no agent acts; waiting %s for the acting one to stop\n", leaseName, ttl)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(ttl):
			}
			removed, err := uninstall(ctx, c, name)
			for _, r := range removed {
				fmt.Fprintln(d.stdout, "removed", r)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.String("stack", "agent", "the agent's stack")
	f.Duration("timeout", 2*time.Minute, "how long to wait for the agent's tasks to stop")
	def := defaultConfig()
	f.String("lease-name", def.Lease.Name, "the agents' lease (agent.yaml lease.name)")
	f.Duration("lease-ttl", def.Lease.TTL, "the agents' lease TTL (agent.yaml lease.ttl)")
	return cmd
}

// seizeLease makes holder the lease's holder for d, whoever holds it: every agent's next renewal fails, so
// the acting one stops its cycle and all stand by. (The labels are internal/swarm's lease labels.)
func seizeLease(ctx context.Context, c swarm.Client, name, holder string, d time.Duration) error {
	for {
		l, err := c.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", name)})
		if err != nil {
			return fmt.Errorf("lease: %w", err)
		}
		labels := map[string]string{stack.LabelOwner: stack.OwnerValue, "io.sawmill.lease.holder": holder,
			"io.sawmill.lease.expires": strconv.FormatInt(time.Now().Add(d).UnixMilli(), 10)}
		var cur *mobyswarm.Config
		for i := range l.Items {
			if l.Items[i].Spec.Name == name {
				cur = &l.Items[i]
			}
		}
		if cur == nil {
			_, err = c.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: mobyswarm.ConfigSpec{
				Annotations: mobyswarm.Annotations{Name: name, Labels: labels}, Data: []byte("sawmill agent lease\n")}})
		} else {
			spec := cur.Spec
			spec.Labels = labels
			_, err = c.ConfigUpdate(ctx, cur.ID, client.ConfigUpdateOptions{Version: cur.Version, Spec: spec})
		}
		if err == nil {
			return nil
		}
		// Another update came first (a renewal): read it again.
		select {
		case <-ctx.Done():
			return fmt.Errorf("lease: %w", errors.Join(err, ctx.Err()))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// uninstall removes the agent stack's services (those the agent owns), then its networks, secrets and
// configs, and the objects install made. It returns what it removed.
func uninstall(ctx context.Context, c swarm.Client, name string) ([]string, error) {
	var removed []string
	own := func(labels map[string]string) bool {
		return labels[stack.LabelNamespace] == name && labels[stack.LabelOwner] == stack.OwnerValue
	}
	byStack := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)
	svcs, err := c.ServiceList(ctx, client.ServiceListOptions{Filters: byStack})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	var ids []string
	for _, s := range svcs.Items {
		if !own(s.Spec.Labels) {
			continue
		}
		if _, err := c.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil {
			return removed, fmt.Errorf("remove service %s: %w", s.Spec.Name, err)
		}
		ids = append(ids, s.ID)
		removed = append(removed, "service "+s.Spec.Name)
	}
	// The tasks take a moment to go; until then their secrets, configs, networks and volumes are in use.
	for len(ids) > 0 {
		// Listed unfiltered: a filter naming a removed service is an error on some engines.
		tasks, err := c.TaskList(ctx, client.TaskListOptions{})
		left := 0
		for _, tk := range tasks.Items {
			if slices.Contains(ids, tk.ServiceID) {
				left++
			}
		}
		if err == nil && left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return removed, fmt.Errorf("the agent's tasks did not stop: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	retry := func(what string, f func() error) error {
		for {
			err := f()
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), "in use") {
				if err != nil {
					return fmt.Errorf("remove %s: %w", what, err)
				}
				removed = append(removed, what)
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("remove %s: %w", what, errors.Join(err, ctx.Err()))
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	var errs []error
	secrets, err := c.SecretList(ctx, client.SecretListOptions{})
	if err != nil {
		return removed, fmt.Errorf("list secrets: %w", err)
	}
	for _, s := range secrets.Items {
		if own(s.Spec.Labels) || s.Spec.Labels[labelInstalled] != "" {
			errs = append(errs, retry("secret "+s.Spec.Name, func() error { _, err := c.SecretRemove(ctx, s.ID, client.SecretRemoveOptions{}); return err }))
		}
	}
	configs, err := c.ConfigList(ctx, client.ConfigListOptions{})
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("list configs: %w", err))...)
	}
	for _, x := range configs.Items {
		if own(x.Spec.Labels) || x.Spec.Labels[labelInstalled] != "" {
			errs = append(errs, retry("config "+x.Spec.Name, func() error { _, err := c.ConfigRemove(ctx, x.ID, client.ConfigRemoveOptions{}); return err }))
		}
	}
	nets, err := c.NetworkList(ctx, client.NetworkListOptions{Filters: byStack})
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("list networks: %w", err))...)
	}
	for _, n := range nets.Items {
		if own(n.Labels) {
			errs = append(errs, retry("network "+n.Name, func() error { _, err := c.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); return err }))
		}
	}
	return removed, errors.Join(errs...)
}
