package compose

import (
	"fmt"
	"maps"
	"math"
	"math/big"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/stack"
)

type converter struct {
	project *types.Project
	files   []string
	loc     locator
	st      *stack.Stack
	// noValues lets secrets and configs whose value is not available load without it (Options.WithoutValues).
	noValues bool
	// env is the environment the objects are labelled with (Options.Environment).
	env string
	// nameKey keys the content hashes of secret and config names (Options.NameKey).
	nameKey []byte
	// conf confines file reads to the release (Options.Root); nil: not confined.
	conf *confinement
	// sops decrypts SOPS-encrypted secret files (Options.SOPS); nil: they are refused.
	sops Decrypter
	// secret and config names by compose key, after hashing.
	secretNames, configNames map[string]string
}

func (c *converter) errf(path []string, format string, args ...any) error {
	return fmt.Errorf("%s: %s", c.loc.at(path...), fmt.Sprintf(format, args...))
}

func (c *converter) convert() (*stack.Stack, error) {
	c.loc.files = c.files
	p := c.project
	c.st = &stack.Stack{Name: p.Name}
	c.secretNames = map[string]string{}
	c.configNames = map[string]string{}

	if err := c.networks(); err != nil {
		return nil, err
	}
	if err := c.objects("secrets", secretObjects(p.Secrets), &c.st.Secrets, c.secretNames); err != nil {
		return nil, err
	}
	if err := c.objects("configs", configObjects(p.Configs), &c.st.Configs, c.configNames); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		svc, err := c.service(p.Services[name])
		if err != nil {
			return nil, err
		}
		c.st.Services = append(c.st.Services, svc)
	}
	if len(p.Services) == 0 {
		return nil, c.errf([]string{"services"}, "no service defined")
	}
	c.pruneUnusedDefaultNetwork()
	c.st.Sort()
	return c.st, nil
}

func (c *converter) networks() error {
	nets := c.project.Networks
	if _, ok := nets["default"]; !ok {
		nets = types.Networks{}
		for k, v := range c.project.Networks {
			nets[k] = v
		}
		nets["default"] = types.NetworkConfig{Name: stack.Scope(c.project.Name, "default")}
	}
	for _, key := range slices.Sorted(maps.Keys(nets)) {
		n := nets[key]
		name := n.Name
		if name == "" {
			name = stack.Scope(c.project.Name, key)
		}
		if n.External {
			c.st.Networks = append(c.st.Networks, stack.Network{Name: name, Key: key, External: true})
			continue
		}
		driver := n.Driver
		if driver == "" {
			driver = "overlay"
		}
		if driver != "overlay" {
			c.warn("", "networks."+key+".driver", driver, "a stack network is usually overlay; "+driver+" is local to each node")
		}
		nw := stack.Network{
			Name: name, Key: key, Driver: driver, Attachable: n.Attachable, Internal: n.Internal,
			Options: map[string]string(n.DriverOpts),
			Labels:  c.stackLabels(n.Labels),
		}
		if n.Ipam.Driver != "" || len(n.Ipam.Config) > 0 {
			ipam := &network.IPAM{Driver: n.Ipam.Driver, Options: map[string]string(n.Ipam.Options)}
			for i, pool := range n.Ipam.Config {
				cfg, err := ipamConfig(pool)
				if err != nil {
					return c.errf([]string{"networks", key, "ipam", "config", strconv.Itoa(i)}, "%v", err)
				}
				ipam.Config = append(ipam.Config, cfg)
			}
			nw.IPAM = ipam
		}
		nw.Labels[stack.LabelSpecHash] = stack.Hash(nw)
		c.st.Networks = append(c.st.Networks, nw)
	}
	return nil
}

// pruneUnusedDefaultNetwork drops the implicit default network when no service uses it.
func (c *converter) pruneUnusedDefaultNetwork() {
	if _, declared := c.project.Networks["default"]; declared {
		return
	}
	def := stack.Scope(c.project.Name, "default")
	for _, s := range c.st.Services {
		for _, n := range s.Spec.TaskTemplate.Networks {
			if n.Target == def {
				return
			}
		}
	}
	out := c.st.Networks[:0]
	for _, n := range c.st.Networks {
		if n.Name != def {
			out = append(out, n)
		}
	}
	c.st.Networks = out
}

type fileObject struct {
	Name, File, Environment, Content string
	External                         bool
	Labels                           map[string]string
	Driver, TemplateDriver           string
	Extensions                       types.Extensions
}

func secretObjects(in types.Secrets) map[string]fileObject {
	out := make(map[string]fileObject, len(in))
	for k, v := range in {
		out[k] = fileObject{v.Name, v.File, v.Environment, v.Content, bool(v.External), v.Labels, v.Driver, v.TemplateDriver, v.Extensions}
	}
	return out
}

func configObjects(in types.Configs) map[string]fileObject {
	out := make(map[string]fileObject, len(in))
	for k, v := range in {
		out[k] = fileObject{v.Name, v.File, v.Environment, v.Content, bool(v.External), v.Labels, v.Driver, v.TemplateDriver, nil}
	}
	return out
}

// objects converts secrets or configs.
func (c *converter) objects(kind string, in map[string]fileObject, out *[]stack.Object, names map[string]string) error {
	for _, key := range slices.Sorted(maps.Keys(in)) {
		o := in[key]
		if o.External {
			name := o.Name
			if name == "" {
				name = key
			}
			names[key] = name
			*out = append(*out, stack.Object{Name: name, Key: key, External: true})
			continue
		}
		if o.Driver != "" || o.TemplateDriver != "" {
			return c.errf([]string{kind, key, "driver"}, "secret and config drivers are not supported by the agent")
		}
		var data []byte
		switch {
		case o.File != "":
			b, err := c.conf.readFile(o.File)
			if err != nil && c.noValues {
				c.warn("", kind+"."+key+".file", "", "cannot read "+o.File+": judged without its value")
				break
			}
			if err != nil {
				return c.errf([]string{kind, key, "file"}, "cannot read %s: %v", o.File, err)
			}
			if kind == "secrets" {
				if _, sops, _ := sopsSecret(o); sops && c.sops == nil && c.noValues {
					c.warn("", kind+"."+key+".file", "", o.File+" is SOPS-encrypted: judged without its value")
					break
				}
				if b, err = c.decrypt(key, o, b); err != nil {
					return err
				}
			}
			data = b
		case o.Environment != "":
			if o.Content == "" && c.noValues {
				c.warn("", kind+"."+key+".environment", o.Environment, "environment variable "+o.Environment+" is not set: judged without its value")
				break
			}
			if o.Content == "" {
				return c.errf([]string{kind, key, "environment"}, "environment variable %s is not set", o.Environment)
			}
			data = []byte(o.Content)
		case o.Content != "":
			if kind == "secrets" {
				return c.errf([]string{kind, key}, "a secret needs `file` or `environment`")
			}
			data = []byte(o.Content)
		default:
			return c.errf([]string{kind, key}, "needs `file`, `environment` or `content`")
		}
		base := o.Name
		if base == "" {
			base = stack.Scope(c.project.Name, key)
		}
		hash := stack.ContentHash(c.nameKey, c.project.Name, key, data)
		if len(base) > 50 {
			base = base[:50]
		}
		name := base + "-" + hash
		labels := c.stackLabels(o.Labels)
		labels[stack.LabelKey] = key
		labels[stack.LabelContentHash] = hash
		names[key] = name
		*out = append(*out, stack.Object{Name: name, Key: key, Labels: labels, Data: data, Hash: hash})
	}
	return nil
}

// droppedKeys are compose keys `docker stack deploy` silently ignores. The agent reports them, and the
// policies judge them.
func (c *converter) dropped(s types.ServiceConfig) {
	name := s.Name
	add := func(field, value string) {
		c.warn(name, field, value, field+" is ignored by Swarm (docker stack deploy drops it)")
	}
	if s.Privileged {
		add("privileged", "true")
	}
	if s.Pid != "" {
		add("pid", s.Pid)
	}
	if s.Ipc != "" {
		add("ipc", s.Ipc)
	}
	if s.NetworkMode != "" {
		add("network_mode", s.NetworkMode)
	}
	for _, o := range s.SecurityOpt {
		add("security_opt", o)
	}
	for _, d := range s.Devices {
		add("devices", d.Source+":"+d.Target)
	}
	if s.Build != nil {
		add("build", s.Build.Context)
	}
	if s.DomainName != "" {
		add("domainname", s.DomainName)
	}
	if len(s.Expose) > 0 {
		add("expose", strings.Join(s.Expose, ","))
	}
	if s.PullPolicy != "" {
		add("pull_policy", s.PullPolicy)
	}
	if s.ContainerName != "" {
		add("container_name", s.ContainerName)
	}
	if s.CgroupParent != "" {
		add("cgroup_parent", s.CgroupParent)
	}
	if len(s.DependsOn) > 0 {
		add("depends_on", strings.Join(slices.Sorted(maps.Keys(s.DependsOn)), ","))
	}
	if len(s.Links) > 0 {
		add("links", strings.Join(s.Links, ","))
	}
	if len(s.ExternalLinks) > 0 {
		add("external_links", strings.Join(s.ExternalLinks, ","))
	}
	// docker stack deploy ignores the service-level tmpfs (a `type: tmpfs` volume is Swarm's tmpfs mount).
	for _, t := range s.Tmpfs {
		add("tmpfs", t)
	}
	if s.UserNSMode != "" {
		add("userns_mode", s.UserNSMode)
	}
	if s.Uts != "" {
		add("uts", s.Uts)
	}
	if len(s.VolumesFrom) > 0 {
		add("volumes_from", strings.Join(s.VolumesFrom, ","))
	}
	if s.MacAddress != "" {
		add("mac_address", s.MacAddress)
	}
	if s.ShmSize != 0 {
		add("shm_size", strconv.FormatInt(int64(s.ShmSize), 10))
	}
	if s.MemLimit != 0 {
		add("mem_limit", strconv.FormatInt(int64(s.MemLimit), 10))
	}
	if s.CPUS != 0 {
		add("cpus", strconv.FormatFloat(float64(s.CPUS), 'f', -1, 32))
	}
	if s.Runtime != "" {
		add("runtime", s.Runtime)
	}
	if s.Restart != "" && s.Deploy != nil && s.Deploy.RestartPolicy != nil {
		add("restart", s.Restart)
	}
}

func (c *converter) warn(service, field, value, msg string) {
	c.st.Warnings = append(c.st.Warnings, stack.Warning{Service: service, Field: field, Value: value, Message: msg})
}

func (c *converter) service(s types.ServiceConfig) (stack.Service, error) {
	ns := c.project.Name
	at := func(field ...string) []string { return append([]string{"services", s.Name}, field...) }
	if s.Image == "" {
		return stack.Service{}, c.errf(at("image"), "a service needs an image (Swarm cannot build)")
	}
	image, err := normalizeImage(s.Image)
	if err != nil {
		return stack.Service{}, c.errf(at("image"), "%v", err)
	}
	c.dropped(s)

	deploy := s.Deploy
	if deploy == nil {
		deploy = &types.DeployConfig{}
	}
	serviceLabels := c.stackLabels(deploy.Labels)
	// As docker stack deploy: the label keeps the image as written (after interpolation); the container spec
	// has it as the engine stores it.
	serviceLabels[stack.LabelImage] = s.Image
	containerLabels := map[string]string{}
	for k, v := range s.Labels {
		containerLabels[k] = v
	}
	containerLabels[stack.LabelNamespace] = ns

	cs := &swarm.ContainerSpec{
		Image:       image,
		Labels:      containerLabels,
		Command:     []string(s.Entrypoint),
		Args:        []string(s.Command),
		Hostname:    s.Hostname,
		Env:         env(s.Environment),
		Dir:         s.WorkingDir,
		User:        s.User,
		Groups:      s.GroupAdd,
		Init:        s.Init,
		StopSignal:  s.StopSignal,
		TTY:         s.Tty,
		OpenStdin:   s.StdinOpen,
		ReadOnly:    s.ReadOnly,
		Sysctls:     map[string]string(s.Sysctls),
		OomScoreAdj: s.OomScoreAdj,
		Hosts:       hosts(s.ExtraHosts),
	}
	cs.CapabilityAdd, cs.CapabilityDrop = capabilities(s.CapAdd, s.CapDrop)
	if cred := s.CredentialSpec; cred != nil {
		if cred.Config != "" {
			return stack.Service{}, c.errf(at("credential_spec", "config"), "a credential spec from a config is not supported by the agent; use file or registry")
		}
		cs.Privileges = &swarm.Privileges{CredentialSpec: &swarm.CredentialSpec{File: cred.File, Registry: cred.Registry}}
	}
	if s.StopGracePeriod != nil {
		d := time.Duration(*s.StopGracePeriod)
		cs.StopGracePeriod = &d
	}
	if len(s.DNS) > 0 || len(s.DNSSearch) > 0 || len(s.DNSOpts) > 0 {
		cs.DNSConfig = &swarm.DNSConfig{Search: s.DNSSearch, Options: s.DNSOpts}
		for i, ns := range s.DNS {
			a, err := netip.ParseAddr(ns)
			if err != nil {
				return stack.Service{}, c.errf(at("dns", strconv.Itoa(i)), "%v", err)
			}
			cs.DNSConfig.Nameservers = append(cs.DNSConfig.Nameservers, a)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.Ulimits)) {
		u := s.Ulimits[name]
		soft, hard := int64(u.Soft), int64(u.Hard)
		if u.Single != 0 {
			soft, hard = int64(u.Single), int64(u.Single)
		}
		cs.Ulimits = append(cs.Ulimits, &container.Ulimit{Name: name, Soft: soft, Hard: hard})
	}
	if s.HealthCheck != nil {
		cs.Healthcheck = healthcheck(s.HealthCheck)
	}
	if cs.Mounts, err = c.mounts(s, at); err != nil {
		return stack.Service{}, err
	}
	for i, ref := range s.Secrets {
		name, ok := c.secretNames[ref.Source]
		if !ok {
			return stack.Service{}, c.errf(at("secrets", strconv.Itoa(i)), "undefined secret %q", ref.Source)
		}
		target := ref.Target
		if target == "" || target == "/run/secrets/"+ref.Source {
			// compose-go writes the default target as /run/secrets/<source>; docker stack deploy submits the
			// bare name (the same file: Swarm puts a relative name under /run/secrets).
			target = ref.Source
		}
		cs.Secrets = append(cs.Secrets, &swarm.SecretReference{
			SecretName: name,
			File:       &swarm.SecretReferenceFileTarget{Name: target, UID: orDefault(ref.UID, "0"), GID: orDefault(ref.GID, "0"), Mode: fileMode(ref.Mode)},
		})
	}
	for i, ref := range s.Configs {
		name, ok := c.configNames[ref.Source]
		if !ok {
			return stack.Service{}, c.errf(at("configs", strconv.Itoa(i)), "undefined config %q", ref.Source)
		}
		target := ref.Target
		if target == "" {
			target = ref.Source // as docker stack deploy: relative, which Swarm puts under /
		}
		cs.Configs = append(cs.Configs, &swarm.ConfigReference{
			ConfigName: name,
			File:       &swarm.ConfigReferenceFileTarget{Name: target, UID: orDefault(ref.UID, "0"), GID: orDefault(ref.GID, "0"), Mode: fileMode(ref.Mode)},
		})
	}
	// By object name, as docker stack deploy sorts them (the content hash after the name keeps the order).
	sort.SliceStable(cs.Secrets, func(i, j int) bool { return cs.Secrets[i].SecretName < cs.Secrets[j].SecretName })
	sort.SliceStable(cs.Configs, func(i, j int) bool { return cs.Configs[i].ConfigName < cs.Configs[j].ConfigName })

	task := swarm.TaskSpec{ContainerSpec: cs}
	if task.RestartPolicy, err = restartPolicy(s, deploy); err != nil {
		return stack.Service{}, c.errf(at("deploy", "restart_policy"), "%v", err)
	}
	task.Resources = resources(deploy.Resources)
	if p := deploy.Placement; len(p.Constraints) > 0 || len(p.Preferences) > 0 || p.MaxReplicas > 0 {
		pl := &swarm.Placement{Constraints: p.Constraints, MaxReplicas: p.MaxReplicas}
		for _, pref := range p.Preferences {
			pl.Preferences = append(pl.Preferences, swarm.PlacementPreference{Spread: &swarm.SpreadOver{SpreadDescriptor: pref.Spread}})
		}
		task.Placement = pl
	}
	if s.Logging != nil && s.Logging.Driver != "" {
		task.LogDriver = &swarm.Driver{Name: s.Logging.Driver, Options: map[string]string(s.Logging.Options)}
	}
	if task.Networks, err = c.serviceNetworks(s, at); err != nil {
		return stack.Service{}, err
	}

	spec := swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: stack.Scope(ns, s.Name), Labels: serviceLabels},
		TaskTemplate: task,
	}
	if spec.Mode, err = mode(s, deploy); err != nil {
		return stack.Service{}, c.errf(at("deploy", "mode"), "%v", err)
	}
	if deploy.UpdateConfig != nil {
		spec.UpdateConfig = updateConfig(deploy.UpdateConfig)
	}
	if deploy.RollbackConfig != nil {
		spec.RollbackConfig = updateConfig(deploy.RollbackConfig)
	}
	if spec.EndpointSpec, err = endpoint(s, deploy); err != nil {
		return stack.Service{}, c.errf(at("ports"), "%v", err)
	}
	stack.SetSpecHash(&spec)
	return stack.Service{Name: spec.Name, Key: s.Name, Spec: spec}, nil
}

// normalizeImage writes an image reference the way the engine stores it (a missing tag becomes :latest), so
// that wanted and observed compare equal.
func normalizeImage(image string) (string, error) {
	ref, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("invalid image reference %q: %w", image, err)
	}
	return reference.FamiliarString(reference.TagNameOnly(ref)), nil
}

func ipamConfig(pool *types.IPAMPool) (network.IPAMConfig, error) {
	var out network.IPAMConfig
	var err error
	if pool.Subnet != "" {
		if out.Subnet, err = netip.ParsePrefix(pool.Subnet); err != nil {
			return out, fmt.Errorf("subnet: %w", err)
		}
	}
	if pool.IPRange != "" {
		if out.IPRange, err = netip.ParsePrefix(pool.IPRange); err != nil {
			return out, fmt.Errorf("ip_range: %w", err)
		}
	}
	if pool.Gateway != "" {
		if out.Gateway, err = netip.ParseAddr(pool.Gateway); err != nil {
			return out, fmt.Errorf("gateway: %w", err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(pool.AuxiliaryAddresses)) {
		a, err := netip.ParseAddr(pool.AuxiliaryAddresses[k])
		if err != nil {
			return out, fmt.Errorf("aux_addresses.%s: %w", k, err)
		}
		if out.AuxAddress == nil {
			out.AuxAddress = map[string]netip.Addr{}
		}
		out.AuxAddress[k] = a
	}
	return out, nil
}

// env writes the environment as docker stack deploy does: KEY=VALUE, a variable without a value (and not
// found in the environment) as the bare KEY, sorted as strings.
func env(m types.MappingWithEquals) []string {
	var out []string
	for k, v := range m {
		if v == nil {
			out = append(out, k)
		} else {
			out = append(out, k+"="+*v)
		}
	}
	sort.Strings(out)
	return out
}

// capabilities normalizes cap_add and cap_drop as docker stack deploy does: upper case with the CAP_ prefix
// (ALL stays ALL), duplicates removed, ALL in a list replaces the rest of it, a capability both added and
// dropped is added, and both lists sorted.
func capabilities(add, drop []string) (outAdd, outDrop []string) {
	set := func(caps []string) map[string]bool {
		m := map[string]bool{}
		for _, c := range caps {
			c = strings.ToUpper(strings.TrimSpace(c))
			if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
				c = "CAP_" + c
			}
			m[c] = true
		}
		if m["ALL"] {
			m = map[string]bool{"ALL": true}
		}
		return m
	}
	a, d := set(add), set(drop)
	for c := range a {
		outAdd = append(outAdd, c)
	}
	for c := range d {
		if !a[c] {
			outDrop = append(outDrop, c)
		}
	}
	sort.Strings(outAdd)
	sort.Strings(outDrop)
	return outAdd, outDrop
}

func hosts(h types.HostsList) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(h)) {
		for _, ip := range h[name] {
			out = append(out, ip+" "+name)
		}
	}
	return out
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func fileMode(m *types.FileMode) os.FileMode {
	if m == nil {
		return 0o444
	}
	return os.FileMode(*m)
}

func healthcheck(h *types.HealthCheckConfig) *container.HealthConfig {
	if h.Disable {
		return &container.HealthConfig{Test: []string{"NONE"}}
	}
	hc := &container.HealthConfig{Test: []string(h.Test)}
	if h.Interval != nil {
		hc.Interval = time.Duration(*h.Interval)
	}
	if h.Timeout != nil {
		hc.Timeout = time.Duration(*h.Timeout)
	}
	if h.StartPeriod != nil {
		hc.StartPeriod = time.Duration(*h.StartPeriod)
	}
	if h.StartInterval != nil {
		hc.StartInterval = time.Duration(*h.StartInterval)
	}
	if h.Retries != nil {
		hc.Retries = int(*h.Retries)
	}
	return hc
}

func (c *converter) mounts(s types.ServiceConfig, at func(...string) []string) ([]mount.Mount, error) {
	var out []mount.Mount
	for i, v := range s.Volumes {
		m := mount.Mount{Target: v.Target, ReadOnly: v.ReadOnly, Consistency: mount.Consistency(v.Consistency)}
		switch v.Type {
		case types.VolumeTypeBind:
			m.Type = mount.TypeBind
			m.Source = v.Source
			if v.Bind != nil && v.Bind.Propagation != "" {
				m.BindOptions = &mount.BindOptions{Propagation: mount.Propagation(v.Bind.Propagation)}
			}
		case types.VolumeTypeVolume:
			m.Type = mount.TypeVolume
			if v.Source != "" {
				vol, ok := c.project.Volumes[v.Source]
				if !ok {
					return nil, c.errf(at("volumes", strconv.Itoa(i)), "undefined volume %q", v.Source)
				}
				m.Source = vol.Name
				if m.Source == "" {
					m.Source = stack.Scope(c.project.Name, v.Source)
				}
				if !vol.External {
					opts := &mount.VolumeOptions{Labels: c.stackLabels(vol.Labels)}
					delete(opts.Labels, stack.LabelOwner)
					if vol.Driver != "" {
						opts.DriverConfig = &mount.Driver{Name: vol.Driver, Options: map[string]string(vol.DriverOpts)}
					}
					if v.Volume != nil {
						opts.NoCopy = v.Volume.NoCopy
						opts.Subpath = v.Volume.Subpath
					}
					m.VolumeOptions = opts
				}
			}
		case types.VolumeTypeTmpfs:
			m.Type = mount.TypeTmpfs
			if v.Tmpfs != nil {
				m.TmpfsOptions = &mount.TmpfsOptions{SizeBytes: int64(v.Tmpfs.Size), Mode: os.FileMode(v.Tmpfs.Mode)}
			}
		default:
			return nil, c.errf(at("volumes", strconv.Itoa(i)), "volume type %q is not supported by Swarm", v.Type)
		}
		out = append(out, m)
	}
	return out, nil
}

func restartPolicy(s types.ServiceConfig, d *types.DeployConfig) (*swarm.RestartPolicy, error) {
	if rp := d.RestartPolicy; rp != nil {
		out := &swarm.RestartPolicy{Condition: swarm.RestartPolicyCondition(rp.Condition), MaxAttempts: rp.MaxAttempts}
		switch out.Condition {
		case "", swarm.RestartPolicyConditionNone, swarm.RestartPolicyConditionOnFailure, swarm.RestartPolicyConditionAny:
		default:
			return nil, fmt.Errorf("condition %q: use none, on-failure or any", rp.Condition)
		}
		if rp.Delay != nil {
			dl := time.Duration(*rp.Delay)
			out.Delay = &dl
		}
		if rp.Window != nil {
			w := time.Duration(*rp.Window)
			out.Window = &w
		}
		return out, nil
	}
	// Like docker stack deploy: the service-level `restart` when deploy.restart_policy is absent.
	switch s.Restart {
	case "":
		return nil, nil
	case "no":
		return &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}, nil
	case "always", "unless-stopped":
		return &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny}, nil
	}
	if strings.HasPrefix(s.Restart, "on-failure") {
		out := &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure}
		if _, n, ok := strings.Cut(s.Restart, ":"); ok {
			a, err := strconv.ParseUint(n, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("restart %q: %w", s.Restart, err)
			}
			out.MaxAttempts = &a
		}
		return out, nil
	}
	return nil, fmt.Errorf("restart %q: unknown policy", s.Restart)
}

func resources(r types.Resources) *swarm.ResourceRequirements {
	if r.Limits == nil && r.Reservations == nil {
		return nil
	}
	out := &swarm.ResourceRequirements{}
	if l := r.Limits; l != nil {
		out.Limits = &swarm.Limit{NanoCPUs: nanoCPUs(l.NanoCPUs), MemoryBytes: int64(l.MemoryBytes), Pids: l.Pids}
	}
	if rs := r.Reservations; rs != nil {
		out.Reservations = &swarm.Resources{NanoCPUs: nanoCPUs(rs.NanoCPUs), MemoryBytes: int64(rs.MemoryBytes)}
		for _, g := range rs.GenericResources {
			if d := g.DiscreteResourceSpec; d != nil {
				out.Reservations.GenericResources = append(out.Reservations.GenericResources,
					swarm.GenericResource{DiscreteResourceSpec: &swarm.DiscreteGenericResource{Kind: d.Kind, Value: d.Value}})
			}
		}
	}
	return out
}

// nanoCPUs converts compose's CPUs (a float32 in compose-go) exactly, as docker parses the decimal: "0.1" is
// 100000000, where float arithmetic gives 100000001.
func nanoCPUs(c types.NanoCPUs) int64 {
	r, ok := new(big.Rat).SetString(strconv.FormatFloat(float64(c), 'f', -1, 32))
	if !ok {
		return int64(math.Round(float64(c) * 1e9))
	}
	r.Mul(r, big.NewRat(1e9, 1))
	f, _ := r.Float64()
	return int64(math.Round(f))
}

func (c *converter) serviceNetworks(s types.ServiceConfig, at func(...string) []string) ([]swarm.NetworkAttachmentConfig, error) {
	// network_mode is reported as dropped; like docker stack deploy, the service still joins its networks
	// (the default one when it names none).
	keys := s.NetworksByPriority()
	if len(keys) == 0 {
		keys = []string{"default"}
	}
	var out []swarm.NetworkAttachmentConfig
	for _, key := range keys {
		var target string
		for _, n := range c.st.Networks {
			if n.Key == key {
				target = n.Name
			}
		}
		if target == "" {
			return nil, c.errf(at("networks", key), "undefined network %q", key)
		}
		// The aliases as written, then the service's name, as docker stack deploy lists them.
		var aliases []string
		if cfg := s.Networks[key]; cfg != nil {
			aliases = append(aliases, cfg.Aliases...)
		}
		aliases = append(aliases, s.Name)
		out = append(out, swarm.NetworkAttachmentConfig{Target: target, Aliases: aliases})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out, nil
}

func mode(s types.ServiceConfig, d *types.DeployConfig) (swarm.ServiceMode, error) {
	replicas := uint64(1)
	if d.Replicas != nil {
		replicas = uint64(*d.Replicas)
	} else if s.Scale != nil {
		replicas = uint64(*s.Scale)
	}
	switch d.Mode {
	case "", "replicated":
		return swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}}, nil
	case "global":
		if d.Replicas != nil {
			return swarm.ServiceMode{}, fmt.Errorf("replicas are not allowed with mode global")
		}
		return swarm.ServiceMode{Global: &swarm.GlobalService{}}, nil
	case "replicated-job":
		return swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{MaxConcurrent: &replicas, TotalCompletions: &replicas}}, nil
	case "global-job":
		return swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}}, nil
	}
	return swarm.ServiceMode{}, fmt.Errorf("unknown mode %q: use replicated, global, replicated-job or global-job", d.Mode)
}

func updateConfig(u *types.UpdateConfig) *swarm.UpdateConfig {
	out := &swarm.UpdateConfig{
		Parallelism:     1,
		Delay:           time.Duration(u.Delay),
		FailureAction:   swarm.FailureAction(u.FailureAction),
		Monitor:         time.Duration(u.Monitor),
		MaxFailureRatio: u.MaxFailureRatio,
		Order:           swarm.UpdateOrder(u.Order),
	}
	if u.Parallelism != nil {
		out.Parallelism = *u.Parallelism
	}
	return out
}

func endpoint(s types.ServiceConfig, d *types.DeployConfig) (*swarm.EndpointSpec, error) {
	// Always an endpoint spec with its mode, as docker stack deploy submits it.
	ep := &swarm.EndpointSpec{Mode: swarm.ResolutionMode(d.EndpointMode)}
	switch ep.Mode {
	case "", swarm.ResolutionModeVIP, swarm.ResolutionModeDNSRR:
	default:
		return nil, fmt.Errorf("endpoint_mode %q: use vip or dnsrr", d.EndpointMode)
	}
	if ep.Mode == "" {
		ep.Mode = swarm.ResolutionModeVIP
	}
	for _, p := range s.Ports {
		pc := swarm.PortConfig{Name: p.Name, TargetPort: p.Target, Protocol: network.IPProtocol(orDefault(p.Protocol, "tcp")), PublishMode: swarm.PortConfigPublishMode(orDefault(p.Mode, "ingress"))}
		if p.Published != "" {
			n, err := strconv.ParseUint(p.Published, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("published port %q: a single port number is needed", p.Published)
			}
			pc.PublishedPort = uint32(n)
		}
		ep.Ports = append(ep.Ports, pc)
	}
	sort.Slice(ep.Ports, func(i, j int) bool {
		a, b := ep.Ports[i], ep.Ports[j]
		if a.PublishedPort != b.PublishedPort {
			return a.PublishedPort < b.PublishedPort
		}
		return a.TargetPort < b.TargetPort
	})
	return ep, nil
}

// stackLabels are the labels of every object the agent creates for the stack: the namespace, the owner, and
// the environment when known, merged over extra.
func (c *converter) stackLabels(extra map[string]string) map[string]string {
	l := stack.StackLabels(c.project.Name, extra)
	if c.env != "" {
		l[stack.LabelEnvironment] = c.env
	}
	return l
}
