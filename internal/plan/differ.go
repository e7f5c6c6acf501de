package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strconv"
	"sync"

	"github.com/sabeiro/sawmill/internal/stack"
)

// Differ computes plans as Compute does, and remembers the comparison of each service: a daemon compares
// the same wanted specs with the same observed ones every cycle, and the comparison (two JSON round trips and
// two flattened trees per service) is most of a no-op plan's time.
//
// A comparison is reused only when all it depends on is the same: the observed service (its ID and
// Version.Index, which Swarm raises with every change of the spec, drift included), the wanted spec (its
// spec-hash label, a hash of the whole spec, set by internal/compose and again after images are pinned) and
// the names of the swarm's networks (an observed spec names networks by ID). Only the services of the last
// plan are kept. The zero value is ready; it is safe for concurrent use.
type Differ struct {
	mu   sync.Mutex
	last map[string]map[string]diffEntry // by stack, by service name
	hits int
}

type diffEntry struct {
	key    string
	fields []string
	drift  bool
}

// Compute is Compute, with the comparisons of unchanged services reused.
func (d *Differ) Compute(wanted, observed *stack.Stack) (*Plan, error) {
	var nets string
	seen := map[string]diffEntry{}
	p, err := compute(wanted, observed, func(w, o stack.Service, netNames map[string]string) ([]string, bool) {
		if nets == "" {
			nets = netKey(netNames)
		}
		hash := w.Spec.Labels[stack.LabelSpecHash]
		key := ""
		if hash != "" && o.ID != "" {
			key = o.ID + "/" + strconv.FormatUint(o.Version, 10) + "/" + hash + "/" + nets
		}
		d.mu.Lock()
		e, ok := d.last[wanted.Name][w.Name]
		if ok && key != "" && e.key == key {
			d.hits++
		}
		d.mu.Unlock()
		if !ok || key == "" || e.key != key {
			fields, drift := ServiceDiff(w.Spec, Normalize(o.Spec, netNames))
			e = diffEntry{key: key, fields: fields, drift: drift}
		}
		seen[w.Name] = e
		return slices.Clone(e.fields), e.drift
	})
	if err == nil {
		d.mu.Lock()
		if d.last == nil {
			d.last = map[string]map[string]diffEntry{}
		}
		d.last[wanted.Name] = seen
		d.mu.Unlock()
	}
	return p, err
}

// Reused returns how many service comparisons were reused.
func (d *Differ) Reused() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hits
}

func netKey(netNames map[string]string) string {
	h := sha256.New()
	for _, id := range slices.Sorted(maps.Keys(netNames)) {
		h.Write([]byte(id + "=" + netNames[id] + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Comparison is one remembered service comparison, for a Differ in another process (`agent apply
// --cache-dir` keeps them on disk): the service, what the comparison depended on (Key: the observed
// service's ID and version, the wanted spec hash and the network names), and its result.
type Comparison struct {
	Service string   `json:"service"`
	Key     string   `json:"key"`
	Fields  []string `json:"fields,omitempty"`
	Drift   bool     `json:"drift,omitempty"`
}

// Comparisons returns the comparisons of the last plan of stack, sorted by service.
func (d *Differ) Comparisons(stack string) []Comparison {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Comparison
	for _, name := range slices.Sorted(maps.Keys(d.last[stack])) {
		if e := d.last[stack][name]; e.key != "" {
			out = append(out, Comparison{Service: name, Key: e.key, Fields: slices.Clone(e.fields), Drift: e.drift})
		}
	}
	return out
}

// Remember makes cs the comparisons of the last plan of stack (Comparisons of an earlier Differ). Each is
// reused, as the Differ's own, only while its Key matches.
func (d *Differ) Remember(stack string, cs []Comparison) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		d.last = map[string]map[string]diffEntry{}
	}
	m := make(map[string]diffEntry, len(cs))
	for _, c := range cs {
		m[c.Service] = diffEntry{key: c.Key, fields: slices.Clone(c.Fields), drift: c.Drift}
	}
	d.last[stack] = m
}
