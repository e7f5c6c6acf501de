package policy

import (
	"bytes"
	"encoding/json"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/stack"
)

// InputKind names the shape of the input document; policies may check it.
const InputKind = "sawmill.io/stack/v1"

// Signature statuses.
const (
	SignatureVerified   = "verified"
	SignatureUnverified = "unverified"
	SignatureUnknown    = "unknown"
)

// Labels the default policies read from a service's deploy labels.
const (
	// LabelRole marks the edge proxy: the only service that may publish ports (LabelRole=RoleEdge).
	LabelRole = "io.sawmill.role"
	// RoleEdge is the value of LabelRole for the edge proxy.
	RoleEdge = "edge"
	// LabelExceptionPrefix + rule names an exception; the label's value is the reason.
	LabelExceptionPrefix = "io.sawmill.exception."
)

// Signature is the verification result of one image. Issue 4 fills it; until then it is "unknown".
type Signature struct {
	Status string `json:"status"`
	Signer string `json:"signer,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// InputOptions are the facts besides the stack that go into the document.
type InputOptions struct {
	// Environment is the name of the target environment (staging, production, ...); may be empty.
	Environment string
	// PreRelease: see Config.PreRelease.
	PreRelease string
	// AllowedRegistries are registry hosts (optionally with a path prefix) images may come from. Empty means
	// the registry rule only warns.
	AllowedRegistries []string
	// Signatures are the verification results by image reference as written in the stack. A missing entry
	// is "unknown".
	Signatures map[string]Signature
	// Tier is the environment's tier as the platform configured it: "production" turns the production rules
	// on (a verified signature for every image). It never comes from the environment's name.
	Tier string
	// Grants are the exceptions (and roles) the platform grants this stack's services; a release's labels
	// only request them. Only the grants for this stack and environment are given.
	Grants []Grant
	// AllowedHostPaths are the host directories (and files) a bind mount may expose; none by default.
	AllowedHostPaths []string
}

// Grant is one exception (or role: RoleEdge) granted by the platform to a service of a stack (Service "*":
// every service of it; Stack "" or "*": every stack). The input document carries the grants of its stack.
type Grant struct {
	Rule    string `json:"rule"`
	Stack   string `json:"-"`
	Service string `json:"service"`
}

// TierProduction is the tier whose rules need a verified signature for every image.
const TierProduction = "production"

// Input is the document the policies judge: `input` in rego, and what `agent render` prints.
type Input struct {
	Kind        string    `json:"kind"`
	Stack       string    `json:"stack"`
	Environment string    `json:"environment"`
	Config      Config    `json:"config"`
	Services    []Service `json:"services"`
	Networks    []Network `json:"networks"`
	Secrets     []Object  `json:"secrets"`
	Configs     []Object  `json:"configs"`
	// Warnings are stack-level remarks of the conversion (those not tied to a service).
	Warnings []stack.Warning `json:"warnings"`
}

// Config is the policy configuration carried in the document, so `conftest` on the rendered document reaches
// the same decisions.
type Config struct {
	AllowedRegistries []string `json:"allowed_registries"`
	// Tier is the environment's tier (production, staging, ...), from the platform's configuration.
	Tier string `json:"tier"`
	// Grants are the exceptions and roles the platform grants this stack's services.
	Grants []Grant `json:"grants"`
	// AllowedHostPaths are the host paths bind mounts may expose (cleaned, absolute).
	AllowedHostPaths []string `json:"allowed_host_paths"`
	// PreRelease is the release registry when the check runs on the repository's files before the release
	// (the pipeline's policy job): images under it are pinned by the release, signatures come later.
	PreRelease string `json:"pre_release,omitempty"`
}

// Service is one service: normalized facts derived from its Swarm spec, plus the spec itself.
type Service struct {
	// Name is the Swarm name (<stack>_<key>), Key the compose service name.
	Name string `json:"name"`
	Key  string `json:"key"`
	// Labels are the service's (deploy) labels.
	Labels map[string]string `json:"labels"`
	// Exceptions are the exception labels: rule -> reason.
	Exceptions map[string]string `json:"exceptions"`
	Image      Image             `json:"image"`
	// Dropped are the compose keys Swarm ignores (privileged, network_mode, pid, ...).
	Dropped       []Dropped         `json:"dropped"`
	Env           []EnvVar          `json:"env"`
	Ports         []Port            `json:"ports"`
	Mounts        []Mount           `json:"mounts"`
	Secrets       []FileRef         `json:"secrets"`
	Configs       []FileRef         `json:"configs"`
	Capabilities  Capabilities      `json:"capabilities"`
	Mode          string            `json:"mode"`
	Replicas      *uint64           `json:"replicas"`
	Healthcheck   *Healthcheck      `json:"healthcheck"`
	Resources     Resources         `json:"resources"`
	RestartPolicy *RestartPolicy    `json:"restart_policy"`
	UpdateConfig  *UpdateConfig     `json:"update_config"`
	Spec          swarm.ServiceSpec `json:"spec"`
}

// Image is a service's image reference, taken apart.
type Image struct {
	Ref        string    `json:"ref"`
	Registry   string    `json:"registry"`
	Repository string    `json:"repository"`
	Tag        string    `json:"tag"`
	Digest     string    `json:"digest"`
	Pinned     bool      `json:"pinned"`
	Signature  Signature `json:"signature"`
}

// Dropped is a compose key Swarm ignores, with its value.
type Dropped struct {
	Field string `json:"field"`
	Value string `json:"value"`
}

// EnvVar is one environment variable of the container spec. Values are in the compose files already; decision
// messages must not quote them.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Port is a published port.
type Port struct {
	Published uint32 `json:"published"`
	Target    uint32 `json:"target"`
	Protocol  string `json:"protocol"`
	Mode      string `json:"mode"`
}

// Mount is a volume, bind or tmpfs mount.
type Mount struct {
	Type     string `json:"type"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
}

// FileRef is a secret or config mounted into a service: by name and target, never its value.
type FileRef struct {
	Name   string `json:"name"`
	Target string `json:"target"`
}

// Capabilities added to and dropped from the container.
type Capabilities struct {
	Add  []string `json:"add"`
	Drop []string `json:"drop"`
}

// Healthcheck in seconds. Disabled is a healthcheck of NONE.
type Healthcheck struct {
	Disabled           bool    `json:"disabled"`
	IntervalSeconds    float64 `json:"interval_seconds"`
	TimeoutSeconds     float64 `json:"timeout_seconds"`
	StartPeriodSeconds float64 `json:"start_period_seconds"`
	Retries            int     `json:"retries"`
}

// Resources are the limits and reservations; zero means unset.
type Resources struct {
	LimitCPUs          float64 `json:"limit_cpus"`
	LimitMemoryBytes   int64   `json:"limit_memory_bytes"`
	ReserveCPUs        float64 `json:"reserve_cpus"`
	ReserveMemoryBytes int64   `json:"reserve_memory_bytes"`
}

// RestartPolicy as set in the spec.
type RestartPolicy struct {
	Condition   string  `json:"condition"`
	MaxAttempts *uint64 `json:"max_attempts"`
}

// UpdateConfig as set in the spec; MonitorSeconds is the effective monitor window (Swarm uses 5s for 0).
type UpdateConfig struct {
	FailureAction  string  `json:"failure_action"`
	MonitorSeconds float64 `json:"monitor_seconds"`
	Parallelism    uint64  `json:"parallelism"`
	Order          string  `json:"order"`
}

// Network of the stack.
type Network struct {
	Name     string `json:"name"`
	Key      string `json:"key"`
	External bool   `json:"external"`
	Driver   string `json:"driver"`
	Internal bool   `json:"internal"`
}

// Object is a secret or config by name: never its data.
type Object struct {
	Name     string `json:"name"`
	Key      string `json:"key"`
	External bool   `json:"external"`
}

// swarmDefaultMonitor is what Swarm uses when update_config.monitor is 0.
const swarmDefaultMonitor = 5.0

// NewInput builds the input document of st. It is deterministic: the same stack and options give the same
// bytes when marshalled.
func NewInput(st *stack.Stack, o InputOptions) *Input {
	in := &Input{
		Kind:        InputKind,
		Stack:       st.Name,
		Environment: o.Environment,
		Config: Config{AllowedRegistries: sortedCopy(o.AllowedRegistries), PreRelease: strings.TrimSuffix(o.PreRelease, "/"),
			Tier: o.Tier, Grants: grantsOf(st.Name, o.Grants), AllowedHostPaths: cleanPaths(o.AllowedHostPaths)},
		Services: []Service{},
		Networks: []Network{},
		Secrets:  []Object{},
		Configs:  []Object{},
		Warnings: []stack.Warning{},
	}
	dropped := map[string][]Dropped{}
	for _, w := range st.Warnings {
		if w.Service == "" {
			in.Warnings = append(in.Warnings, w)
			continue
		}
		dropped[w.Service] = append(dropped[w.Service], Dropped{Field: w.Field, Value: w.Value})
	}
	for _, s := range st.Services {
		svc := service(s, o)
		if d := dropped[s.Key]; d != nil {
			svc.Dropped = d
		}
		sort.SliceStable(svc.Dropped, func(i, j int) bool {
			if svc.Dropped[i].Field != svc.Dropped[j].Field {
				return svc.Dropped[i].Field < svc.Dropped[j].Field
			}
			return svc.Dropped[i].Value < svc.Dropped[j].Value
		})
		in.Services = append(in.Services, svc)
	}
	sort.Slice(in.Services, func(i, j int) bool { return in.Services[i].Name < in.Services[j].Name })
	for _, n := range st.Networks {
		in.Networks = append(in.Networks, Network{Name: n.Name, Key: n.Key, External: n.External, Driver: n.Driver, Internal: n.Internal})
	}
	sort.Slice(in.Networks, func(i, j int) bool { return in.Networks[i].Name < in.Networks[j].Name })
	for _, x := range st.Secrets {
		in.Secrets = append(in.Secrets, Object{Name: x.Name, Key: x.Key, External: x.External})
	}
	sort.Slice(in.Secrets, func(i, j int) bool { return in.Secrets[i].Name < in.Secrets[j].Name })
	for _, x := range st.Configs {
		in.Configs = append(in.Configs, Object{Name: x.Name, Key: x.Key, External: x.External})
	}
	sort.Slice(in.Configs, func(i, j int) bool { return in.Configs[i].Name < in.Configs[j].Name })
	return in
}

// JSON returns the document as indented JSON with a trailing newline.
func (in *Input) JSON() ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // `&&` in a healthcheck and <redacted> read as written
	enc.SetIndent("", "  ")
	if err := enc.Encode(in); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func service(s stack.Service, o InputOptions) Service {
	spec := s.Spec
	cs := spec.TaskTemplate.ContainerSpec
	if cs == nil {
		cs = &swarm.ContainerSpec{}
	}
	out := Service{
		Name:       s.Name,
		Key:        s.Key,
		Labels:     map[string]string{},
		Exceptions: map[string]string{},
		Dropped:    []Dropped{},
		Env:        []EnvVar{},
		Ports:      []Port{},
		Mounts:     []Mount{},
		Secrets:    []FileRef{},
		Configs:    []FileRef{},
		Capabilities: Capabilities{
			Add:  nonNil(cs.CapabilityAdd),
			Drop: nonNil(cs.CapabilityDrop),
		},
		Spec: spec,
	}
	for k, v := range spec.Labels {
		out.Labels[k] = v
		if rule, ok := strings.CutPrefix(k, LabelExceptionPrefix); ok && rule != "" {
			out.Exceptions[rule] = v
		}
	}
	out.Image = image(cs.Image, o.Signatures)
	for _, e := range cs.Env {
		k, v, _ := strings.Cut(e, "=")
		out.Env = append(out.Env, EnvVar{Name: k, Value: v})
	}
	sort.SliceStable(out.Env, func(i, j int) bool { return out.Env[i].Name < out.Env[j].Name })
	if ep := spec.EndpointSpec; ep != nil {
		for _, p := range ep.Ports {
			if p.PublishedPort == 0 {
				continue
			}
			out.Ports = append(out.Ports, Port{Published: p.PublishedPort, Target: p.TargetPort, Protocol: string(p.Protocol), Mode: string(p.PublishMode)})
		}
	}
	for _, m := range cs.Mounts {
		src := m.Source
		if m.Type == "bind" {
			src = cleanHostPath(src)
		}
		out.Mounts = append(out.Mounts, Mount{Type: string(m.Type), Source: src, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	for _, r := range cs.Secrets {
		f := FileRef{Name: r.SecretName}
		if r.File != nil {
			f.Target = r.File.Name
		}
		out.Secrets = append(out.Secrets, f)
	}
	for _, r := range cs.Configs {
		f := FileRef{Name: r.ConfigName}
		if r.File != nil {
			f.Target = r.File.Name
		}
		out.Configs = append(out.Configs, f)
	}
	switch m := spec.Mode; {
	case m.Global != nil:
		out.Mode = "global"
	case m.ReplicatedJob != nil:
		out.Mode = "replicated-job"
		out.Replicas = m.ReplicatedJob.TotalCompletions
	case m.GlobalJob != nil:
		out.Mode = "global-job"
	default:
		out.Mode = "replicated"
		if m.Replicated != nil {
			out.Replicas = m.Replicated.Replicas
		}
	}
	if h := cs.Healthcheck; h != nil {
		out.Healthcheck = &Healthcheck{
			Disabled:           len(h.Test) > 0 && h.Test[0] == "NONE",
			IntervalSeconds:    h.Interval.Seconds(),
			TimeoutSeconds:     h.Timeout.Seconds(),
			StartPeriodSeconds: h.StartPeriod.Seconds(),
			Retries:            h.Retries,
		}
	}
	if r := spec.TaskTemplate.Resources; r != nil {
		if l := r.Limits; l != nil {
			out.Resources.LimitCPUs = float64(l.NanoCPUs) / 1e9
			out.Resources.LimitMemoryBytes = l.MemoryBytes
		}
		if rs := r.Reservations; rs != nil {
			out.Resources.ReserveCPUs = float64(rs.NanoCPUs) / 1e9
			out.Resources.ReserveMemoryBytes = rs.MemoryBytes
		}
	}
	if rp := spec.TaskTemplate.RestartPolicy; rp != nil {
		out.RestartPolicy = &RestartPolicy{Condition: string(rp.Condition), MaxAttempts: rp.MaxAttempts}
	}
	if u := spec.UpdateConfig; u != nil {
		mon := u.Monitor.Seconds()
		if mon == 0 {
			mon = swarmDefaultMonitor
		}
		out.UpdateConfig = &UpdateConfig{FailureAction: string(u.FailureAction), MonitorSeconds: mon, Parallelism: u.Parallelism, Order: string(u.Order)}
	}
	return out
}

// image takes a reference apart. A reference that does not parse keeps only Ref (the compose loader has
// validated it already).
func image(ref string, sigs map[string]Signature) Image {
	img := Image{Ref: ref, Signature: Signature{Status: SignatureUnknown}}
	if s, ok := sigs[ref]; ok {
		img.Signature = s
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return img
	}
	img.Registry = reference.Domain(named)
	img.Repository = reference.Path(named)
	if t, ok := named.(reference.Tagged); ok {
		img.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		img.Digest = d.Digest().String()
	}
	img.Pinned = stack.IsDigest(img.Digest)
	return img
}

func nonNil(s []string) []string {
	out := make([]string, len(s))
	copy(out, s)
	return out
}

func sortedCopy(s []string) []string {
	out := nonNil(s)
	sort.Strings(out)
	return out
}

// cleanHostPath is a bind mount's source as the host resolves it: absolute and cleaned, so that
// `/var/run/./docker.sock` and `//var/run/docker.sock` read `/var/run/docker.sock`. A relative source (which
// Docker refuses for a bind) is made absolute from /.
func cleanHostPath(p string) string { return path.Clean("/" + p) }

func cleanPaths(ps []string) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, cleanHostPath(p))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// grantsOf returns the grants for stack, without their stack, sorted.
func grantsOf(stack string, gs []Grant) []Grant {
	out := []Grant{}
	for _, g := range gs {
		if g.Stack == "" || g.Stack == "*" || g.Stack == stack {
			g.Stack = ""
			out = append(out, g)
		}
	}
	slices.SortFunc(out, func(a, b Grant) int {
		if c := strings.Compare(a.Rule, b.Rule); c != 0 {
			return c
		}
		return strings.Compare(a.Service, b.Service)
	})
	return slices.Compact(out)
}

// RedactEnv passes every environment variable's value (in the normalized facts and in the spec) through
// clean: agent render shows what variables put there as <redacted>.
func (in *Input) RedactEnv(clean func(string) string) {
	for i := range in.Services {
		svc := &in.Services[i]
		for j := range svc.Env {
			svc.Env[j].Value = clean(svc.Env[j].Value)
		}
		if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil {
			env := make([]string, len(cs.Env))
			for j, e := range cs.Env {
				env[j] = clean(e)
			}
			c := *cs
			c.Env = env
			svc.Spec.TaskTemplate.ContainerSpec = &c
		}
	}
}
