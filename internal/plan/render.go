package plan

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Render writes the plan for people: one line an object, the fields that differ, then the warnings.
func Render(w io.Writer, p *Plan) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "stack %s\n", p.Stack)
	counts := map[Action]int{}
	for _, c := range p.Changes {
		counts[c.Action]++
		line := fmt.Sprintf("  %s\t%s\t%s", c.Kind, c.Name, c.Action)
		if c.Detail != "" {
			line += "\t" + c.Detail
		}
		fmt.Fprintln(tw, line)
		if len(c.Fields) > 0 {
			fmt.Fprintf(tw, "  \t\t\tfields: %s\n", strings.Join(c.Fields, ", "))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, wr := range p.Warnings {
		who := wr.Service
		if who == "" {
			who = "stack"
		}
		if _, err := fmt.Fprintf(w, "warning: %s: %s\n", who, wr.Message); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%d created, %d configured, %d unchanged, %d deleted\n",
		counts[Created], counts[Configured], counts[Unchanged], counts[Deleted])
	return err
}

// RenderJSON writes the plan as indented JSON.
func RenderJSON(w io.Writer, p *Plan) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}
