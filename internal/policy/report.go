package policy

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"sort"
	"strings"
)

// WriteText writes the report for a terminal: one line per decision and a summary.
func WriteText(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "policy check: stack %s, %d services, %d rules (revision %s)\n", r.Stack, len(r.Services), len(r.Rules), r.Revision)
	for _, d := range r.Decisions {
		fmt.Fprintf(&b, "%-4s %s: %s\n", strings.ToUpper(d.Kind), d.Rule, d.Message)
	}
	for _, x := range r.Excepted {
		fmt.Fprintf(&b, "EXCEPTED %s (conftest exception rule)\n", x)
	}
	fmt.Fprintf(&b, "%d denied, %d warnings\n", len(r.Denies()), len(r.Warns()))
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report as indented JSON.
func WriteJSON(w io.Writer, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Classname string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as a JUnit XML test report (GitLab's `artifacts:reports:junit`): one test case
// per service and rule, a failure for each deny; warnings go to the test case's system-out. Decisions not
// tied to a service are test cases of the pseudo-service "(stack)".
func WriteJUnit(w io.Writer, r *Report) error {
	type key struct{ service, rule string }
	byCase := map[key][]Decision{}
	stackRules := map[string]bool{}
	for _, d := range r.Decisions {
		k := key{d.Service, d.Source}
		byCase[k] = append(byCase[k], d)
		if d.Service == "" {
			stackRules[d.Source] = true
		}
	}
	suite := junitSuite{Name: "policy: " + r.Stack}
	add := func(service, class, rule string) {
		c := junitCase{Classname: class, Name: rule}
		var fail, out []string
		for _, d := range byCase[key{service, rule}] {
			if d.Kind == Deny {
				fail = append(fail, d.Message)
			} else {
				out = append(out, "WARN "+d.Message)
			}
		}
		if len(fail) > 0 {
			c.Failure = &junitFailure{Message: fail[0], Type: Deny, Text: strings.Join(fail, "\n")}
			suite.Failures++
		}
		c.SystemOut = strings.Join(out, "\n")
		suite.Cases = append(suite.Cases, c)
		suite.Tests++
	}
	seen := map[string]bool{}
	var services []string
	for _, s := range r.Services {
		if !seen[s] {
			seen[s] = true
			services = append(services, s)
		}
	}
	for k := range byCase {
		if k.service != "" && !seen[k.service] {
			seen[k.service] = true
			services = append(services, k.service)
		}
	}
	sort.Strings(services)
	for _, s := range services {
		for _, rule := range r.Rules {
			add(s, r.Stack+"."+s, rule)
		}
	}
	var sr []string
	for rule := range stackRules {
		sr = append(sr, rule)
	}
	sort.Strings(sr)
	for _, rule := range sr {
		add("", r.Stack+".(stack)", rule)
	}
	doc := junitSuites{Name: "sawmill policy", Tests: suite.Tests, Failures: suite.Failures, Suites: []junitSuite{suite}}
	b, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
