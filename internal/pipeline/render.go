package pipeline

import (
	"bytes"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// A small YAML emitter: block mappings, sequences and scalars, nothing else, written straight
// into one buffer (no intermediate tree: pipegen renders ~3,000 jobs, and boxing every key and
// value cost more than writing them). Strings are written plain when that cannot change their
// meaning, else double quoted; output depends on the input only.

// block is a mapping being written at indentation ind; its first key continues the current line
// (after "- " or the parent key's indentation), the next ones start indented.
type block struct {
	b       *bytes.Buffer
	ind     int
	started bool
}

func (m *block) key(k string) {
	if m.started {
		indent(m.b, m.ind)
	}
	m.started = true
	writeKey(m.b, k)
	m.b.WriteByte(':')
}

// str writes k: v.
func (m *block) str(k, v string) {
	m.key(k)
	m.b.WriteByte(' ')
	writeString(m.b, v)
	m.b.WriteByte('\n')
}

// flag writes k: true|false.
func (m *block) flag(k string, v bool) {
	m.key(k)
	m.b.WriteByte(' ')
	m.b.WriteString(strconv.FormatBool(v))
	m.b.WriteByte('\n')
}

// mapping starts a non-empty mapping under k.
func (m *block) mapping(k string) *block {
	m.key(k)
	m.b.WriteByte('\n')
	indent(m.b, m.ind+2)
	return &block{b: m.b, ind: m.ind + 2}
}

// seq starts a sequence of n items under k (an empty one is written "[]" and has no items).
func (m *block) seq(k string, n int) {
	m.key(k)
	if n == 0 {
		m.b.WriteString(" []\n")
		return
	}
	m.b.WriteByte('\n')
}

// item starts a non-empty mapping item of a sequence under one of m's keys.
func (m *block) item() *block {
	indent(m.b, m.ind+2)
	m.b.WriteString("- ")
	return &block{b: m.b, ind: m.ind + 4}
}

// strItem writes a string item of a sequence under one of m's keys.
func (m *block) strItem(v string) {
	indent(m.b, m.ind+2)
	m.b.WriteString("- ")
	writeString(m.b, v)
	m.b.WriteByte('\n')
}

func (m *block) strSeq(k string, ss []string) {
	m.seq(k, len(ss))
	for _, s := range ss {
		m.strItem(s)
	}
}

func (m *block) vars(k string, vs []Var) {
	v := m.mapping(k)
	for _, x := range vs {
		v.str(x.Name, x.Value)
	}
}

// emit writes the pipeline's top-level mapping: a blank line after each mapping but the last entry.
func (p *Pipeline) emit(b *bytes.Buffer) {
	top := &block{b: b}
	if p.Component != "" {
		top.seq("include", 1)
		top.item().str("component", p.Component)
	} else if len(p.Includes) > 0 {
		top.seq("include", len(p.Includes))
		for _, f := range p.Includes {
			top.item().str("local", f)
		}
	}
	top.strSeq("stages", p.Stages)
	if len(p.Variables) > 0 {
		top.vars("variables", p.Variables)
		if len(p.Jobs) > 0 {
			b.WriteByte('\n')
		}
	}
	p.emitJobs(b)
}

// parallelJobs is the number of jobs from which emitJobs renders on every processor.
const parallelJobs = 512

// emitJobs writes the jobs (top-level entries after "stages"), a blank line between two. A large
// pipeline is rendered in one contiguous chunk of jobs per processor, each into its own buffer,
// joined in order: the same bytes as one pass.
func (p *Pipeline) emitJobs(b *bytes.Buffer) {
	chunks := min(runtime.GOMAXPROCS(0), 4)
	if len(p.Jobs) < parallelJobs || chunks < 2 {
		p.emitRange(b, 0, len(p.Jobs))
		return
	}
	per := (len(p.Jobs) + chunks - 1) / chunks
	bufs := make([]bytes.Buffer, chunks)
	var wg sync.WaitGroup
	for k := 1; k < chunks; k++ {
		wg.Go(func() {
			lo, hi := min(k*per, len(p.Jobs)), min((k+1)*per, len(p.Jobs))
			bufs[k].Grow(512 * (hi - lo))
			p.emitRange(&bufs[k], lo, hi)
		})
	}
	p.emitRange(b, 0, min(per, len(p.Jobs)))
	wg.Wait()
	for k := 1; k < chunks; k++ {
		b.Write(bufs[k].Bytes())
	}
}

// emitRange writes jobs lo to hi-1 as entries of the top-level mapping (never its first).
func (p *Pipeline) emitRange(b *bytes.Buffer, lo, hi int) {
	top := &block{b: b, started: true}
	for i := lo; i < hi; i++ {
		j := &p.Jobs[i]
		j.emit(top.mapping(j.Name))
		if i < len(p.Jobs)-1 {
			b.WriteByte('\n')
		}
	}
}

func (j *Job) emit(m *block) {
	m.str("extends", j.Extends)
	m.str("stage", j.Stage)
	if !j.NoNeeds && j.Needs != nil {
		m.seq("needs", len(j.Needs))
		for _, n := range j.Needs {
			it := m.item()
			if n.Pipeline != "" {
				it.str("pipeline", n.Pipeline)
			}
			it.str("job", n.Job)
			it.flag("artifacts", n.Artifacts)
		}
	}
	if len(j.Variables) > 0 {
		m.vars("variables", j.Variables)
	}
	if len(j.IDTokens) > 0 {
		t := m.mapping("id_tokens")
		for _, v := range j.IDTokens {
			t.mapping(v.Name).str("aud", v.Value)
		}
	}
	if j.Environment != nil {
		e := m.mapping("environment")
		e.str("name", j.Environment.Name)
		e.str("deployment_tier", j.Environment.Tier)
	}
	if j.ResourceGroup != "" {
		m.str("resource_group", j.ResourceGroup)
	}
	if len(j.Rules) > 0 {
		m.seq("rules", len(j.Rules))
		for _, x := range j.Rules {
			it := m.item()
			it.str("if", x.If)
			it.str("when", x.When)
		}
	}
	if j.AllowFailure != nil {
		m.flag("allow_failure", *j.AllowFailure)
	}
	if j.Interruptible != nil {
		m.flag("interruptible", *j.Interruptible)
	}
	if j.Dotenv != "" || len(j.Paths) > 0 {
		a := m.mapping("artifacts")
		if len(j.Paths) > 0 {
			a.strSeq("paths", j.Paths)
		}
		if j.Dotenv != "" {
			a.mapping("reports").str("dotenv", j.Dotenv)
		}
	}
}

// Render writes the pipeline as YAML.
func (p *Pipeline) Render(w io.Writer) error {
	_, err := w.Write(p.Bytes())
	return err
}

// Bytes renders the pipeline (into one buffer sized for it: no copy).
func (p *Pipeline) Bytes() []byte {
	var b bytes.Buffer
	b.Grow(1024 + 512*len(p.Jobs))
	b.WriteString("# Generated by pipegen. Do not edit: change the repository layout, pipegen.yaml or the templates.\n")
	p.emit(&b)
	return b.Bytes()
}

const spaces = "                                "

func indent(b *bytes.Buffer, n int) {
	for n > len(spaces) {
		b.WriteString(spaces)
		n -= len(spaces)
	}
	b.WriteString(spaces[:n])
}

var reserved = map[string]bool{"true": true, "false": true, "yes": true, "no": true, "on": true, "off": true, "y": true, "n": true, "null": true}

// reservedWord is reserved[strings.ToLower(s)] without lowering the strings longer than every reserved word
// (most keys and values: pipegen renders a few hundred thousand of them).
// An ASCII string is lowered on the stack; any other goes through strings.ToLower as before.
func reservedWord(s string) bool {
	if len(s) > len("false") {
		return false
	}
	var low [len("false")]byte
	for i := range len(s) {
		c := s[i]
		if c >= 0x80 {
			return reserved[strings.ToLower(s)]
		}
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		low[i] = c
	}
	return reserved[string(low[:len(s)])]
}

func letter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func digit(c byte) bool  { return c >= '0' && c <= '9' }

// plainKey: ^\.?[A-Za-z_][A-Za-z0-9_.-]*$ and not a YAML boolean or null.
func plainKey(k string) bool {
	s := strings.TrimPrefix(k, ".")
	if s == "" || !(letter(s[0]) || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !(letter(c) || digit(c) || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return !reservedWord(k)
}

// plainValue: ^(\.?[A-Za-z/$])[A-Za-z0-9_./@${}=+-]*( [A-Za-z0-9_./@${}=+-]+)*$ and not a
// YAML boolean or null: such a string reads back as the same string.
func plainValue(v string) bool {
	s := v
	if len(s) > 1 && s[0] == '.' {
		s = s[1:]
	}
	if s == "" || !(letter(s[0]) || s[0] == '/' || s[0] == '$') || s[len(s)-1] == ' ' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case letter(c), digit(c):
		case c == ' ':
			if s[i-1] == ' ' {
				return false
			}
		case strings.IndexByte("_./@${}=+-", c) >= 0:
		default:
			return false
		}
	}
	return !reservedWord(v)
}

// writeKey writes k plain when it reads back as the same key, else double quoted.
func writeKey(b *bytes.Buffer, k string) {
	if plainKey(k) {
		b.WriteString(k)
		return
	}
	writeQuoted(b, k)
}

// writeString writes v plain when it reads back as the same string, else double quoted.
func writeString(b *bytes.Buffer, v string) {
	if plainValue(v) {
		b.WriteString(v)
		return
	}
	writeQuoted(b, v)
}

// writeQuoted writes strconv.Quote(s): a string of printable ASCII without '"' or '\\' (most quoted keys,
// such as "build:img0001") is s between quotes, without the rune by rune escaping.
func writeQuoted(b *bytes.Buffer, s string) {
	for i := range len(s) {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			b.Write(strconv.AppendQuote(b.AvailableBuffer(), s))
			return
		}
	}
	b.WriteByte('"')
	b.WriteString(s)
	b.WriteByte('"')
}
