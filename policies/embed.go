// Package policies embeds the default policy set (rego v1, *.rego) that the agent enforces, so the binary
// carries it. The files are ordinary rego: `conftest test --policy policies/` and `opa test policies/` read
// them as they are. The engine is internal/policy; see README.md in this directory for the rules.
package policies

import "embed"

// FS holds every *.rego file of this directory, the *_test.rego unit tests included.
//
//go:embed *.rego
var FS embed.FS
