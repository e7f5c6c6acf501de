package reconcile

import (
	"regexp"
	"sync"
)

// lazyRegexp returns a MatchString that compiles expr on its first call: the expressions with counted
// repetitions ({7,64}) cost ~0.6 M instructions to compile, which every command (`agent version` too) paid
// in package initialisation; only the daemon's pin and history checks match them.
func lazyRegexp(expr string) interface{ MatchString(string) bool } {
	return lazyRe{sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })}
}

type lazyRe struct{ re func() *regexp.Regexp }

func (l lazyRe) MatchString(s string) bool { return l.re().MatchString(s) }
