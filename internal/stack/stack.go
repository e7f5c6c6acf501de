// Package stack holds the one set of types that describes a stack on a Docker Swarm, used for both the wanted
// state (converted from compose files) and the observed state (read from the engine), so that comparing them
// is a pure function.
//
// It holds types and small pure helpers only: no I/O. It may import the Docker API types
// (github.com/moby/moby/api/types/...) and the standard library, nothing of this project.
package stack

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// Labels the agent puts on every object it creates. The namespace label and the `<stack>_<name>` naming
// follow `docker stack deploy`, so `docker stack ps` and `docker stack services` keep working.
const (
	LabelNamespace = "com.docker.stack.namespace"
	LabelImage     = "com.docker.stack.image"
	// LabelOwner marks objects the agent created. Objects without it are never modified or removed.
	LabelOwner = "io.sawmill.owner"
	// OwnerValue is the value of LabelOwner.
	OwnerValue = "sawmill-agent"
	// LabelSpecHash carries the hash of the wanted spec the object was last written from.
	LabelSpecHash = "io.sawmill.spec-hash"
	// LabelKey is the object's name inside the compose file (secrets and configs carry a content hash in
	// their Swarm name, so the compose name is kept here).
	LabelKey = "io.sawmill.key"
	// LabelEnvironment names the environment whose agent created the object.
	LabelEnvironment = "io.sawmill.environment"
	// LabelContentHash is the content hash that is part of a secret's or config's name.
	LabelContentHash = "io.sawmill.content-hash"
)

// Kind names the four kinds of objects in a stack.
type Kind string

// The kinds, in the order they are created.
const (
	KindNetwork Kind = "network"
	KindSecret  Kind = "secret"
	KindConfig  Kind = "config"
	KindService Kind = "service"
)

// Stack is everything that belongs to one stack.
type Stack struct {
	Name string
	// Environment is the environment the wanted stack is for (its objects are labelled with it); empty for
	// an observed stack and when not known.
	Environment string
	Networks    []Network
	Secrets     []Object
	Configs     []Object
	Services    []Service
	// Warnings are facts about the conversion a user should see: compose keys Swarm ignores, and the like.
	Warnings []Warning
}

// Service is a Swarm service. Name is the Swarm name (`<stack>_<key>`).
type Service struct {
	Name string
	Key  string
	Spec swarm.ServiceSpec

	// Observed only.
	ID           string
	Version      uint64
	PreviousSpec *swarm.ServiceSpec
	UpdateStatus *swarm.UpdateStatus
}

// Network is a network of the stack. External networks are referenced, never created.
type Network struct {
	Name       string
	Key        string
	External   bool
	Driver     string
	Attachable bool
	Internal   bool
	Options    map[string]string
	Labels     map[string]string
	IPAM       *network.IPAM

	// Observed only.
	ID string
}

// Object is a secret or a config. Swarm cannot change their data, so Name carries a hash of the content and
// a changed value is a new object.
type Object struct {
	Name     string
	Key      string
	External bool
	Labels   map[string]string
	// Data is the content. It is never printed, logged or marshalled.
	Data []byte `json:"-"`
	Hash string

	// Observed only.
	ID string
}

// Warning is a remark on one service or object.
type Warning struct {
	Service string `json:"service,omitempty"`
	Field   string `json:"field"`
	Value   string `json:"value,omitempty"`
	Message string `json:"message"`
}

// Scope returns the Swarm name of a stack-local name, as `docker stack deploy` does.
func Scope(stack, name string) string { return stack + "_" + name }

// OwnedBy reports whether labels mark an object as created by the agent for stack.
func OwnedBy(labels map[string]string, stack, env string) bool {
	if labels[LabelOwner] != OwnerValue || labels[LabelNamespace] != stack {
		return false
	}
	e := labels[LabelEnvironment]
	return e == "" || env == "" || e == env
}

// StackLabels returns the labels every object of stack carries, merged over extra.
func StackLabels(stack string, extra map[string]string) map[string]string {
	out := make(map[string]string, len(extra)+2)
	for k, v := range extra {
		out[k] = v
	}
	out[LabelNamespace] = stack
	out[LabelOwner] = OwnerValue
	return out
}

// Hash returns a short stable hash of v's JSON form.
func Hash(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// The types hashed here are plain data; a failure is a programming error.
		panic("stack: hash: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

// ContentHash returns the hash that goes into a secret's or config's name: an HMAC-SHA256, keyed with the
// swarm's name key, of the stack, the compose key and the data; so a name seen in a log or a commit status
// cannot be tested against guessed values. Without a key (agent check and render, which judge specs and never
// values) the data is left out: such a name says nothing about the value.
func ContentHash(nameKey []byte, stack, key string, data []byte) string {
	if nameKey == nil {
		h := sha256.Sum256([]byte("sawmill\x00" + stack + "\x00" + key + "\x00no-value"))
		return hex.EncodeToString(h[:])[:12]
	}
	h := hmac.New(sha256.New, nameKey)
	h.Write([]byte("sawmill\x00" + stack + "\x00" + key + "\x00"))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// Sort puts every list of s into name order, so output built from it is deterministic.
func (s *Stack) Sort() {
	sort.Slice(s.Networks, func(i, j int) bool { return s.Networks[i].Name < s.Networks[j].Name })
	sort.Slice(s.Secrets, func(i, j int) bool { return s.Secrets[i].Name < s.Secrets[j].Name })
	sort.Slice(s.Configs, func(i, j int) bool { return s.Configs[i].Name < s.Configs[j].Name })
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Name < s.Services[j].Name })
	sort.SliceStable(s.Warnings, func(i, j int) bool {
		if s.Warnings[i].Service != s.Warnings[j].Service {
			return s.Warnings[i].Service < s.Warnings[j].Service
		}
		return s.Warnings[i].Field < s.Warnings[j].Field
	})
}

// SetSpecHash (re)computes the spec-hash label of a service spec, after any change to the spec.
func SetSpecHash(spec *swarm.ServiceSpec) {
	if spec.Labels == nil {
		spec.Labels = map[string]string{}
	}
	delete(spec.Labels, LabelSpecHash)
	spec.Labels[LabelSpecHash] = Hash(*spec)
}

// IsDigest reports whether s is an image digest in canonical form: `sha256:` and 64 lower-case hex digits.
// It is the one digest pattern of the project (release.json, the policy input, pipegen release).
func IsDigest(s string) bool {
	const prefix = "sha256:"
	if len(s) != len(prefix)+64 || s[:len(prefix)] != prefix {
		return false
	}
	for _, c := range s[len(prefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
