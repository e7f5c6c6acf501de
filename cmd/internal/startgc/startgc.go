// Package startgc turns the garbage collector off while the program's packages initialise, unless GOGC is
// set in the environment. A command imports it; its main then sets the collector's target for the command it
// runs (Restore).
//
// Why: the libraries the agent links build their tables in their init functions (santhosh-tekuri/jsonschema
// compiles the JSON-schema drafts' metaschemas, OPA, govalidator, distribution/reference compile regular
// expressions): ~5 MB of allocations, most of them live until exit. With Go's default target the runtime
// collects two or three times before main, marking and sweeping what stays live anyway: `agent version`
// executed 71-80 M instructions with GOGC=100 and 50 M with the collector off during init
// (docs/benchmarks.md).
//
// The package imports only runtime/debug and os, so Go's initialisation order (dependencies first, then by
// import path) runs it before most of those libraries (in the agent: after ~2 MB of the init allocations,
// distribution/reference's among them; before jsonschema, govalidator and OPA).
package startgc

import (
	"os"
	"runtime/debug"
)

// fromEnv is whether GOGC was set in the environment; then the runtime's setting is left alone.
var fromEnv = os.Getenv("GOGC") != ""

func init() {
	if !fromEnv {
		debug.SetGCPercent(-1)
	}
}

// Restore sets the collector's target to percent, unless GOGC is set in the environment (then the
// environment's setting stays). Call it first thing in main.
func Restore(percent int) {
	if !fromEnv {
		debug.SetGCPercent(percent)
	}
}

// OffWithLimit keeps the collector off after init and sets a soft memory limit of limit bytes instead: the
// runtime collects only when the Go heap and runtime memory near the limit. For one-shot commands whose
// allocations stay mostly live until exit (pipegen generate: ~16 MB for 1,000 images, of which one
// collection at the default target reclaimed a third, for 15% of the run). A heap that outgrows the limit
// is collected as often as needed, within the runtime's GC CPU limiter (at most half the CPU), so a larger
// input is slower, not killed. GOGC or GOMEMLIMIT in the environment win (the collector's target is then
// restored to percent, or left as GOGC says).
func OffWithLimit(limit int64, percent int) {
	if fromEnv {
		return
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		debug.SetGCPercent(percent)
		return
	}
	debug.SetMemoryLimit(limit)
}
