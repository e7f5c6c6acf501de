package compose

import (
	"fmt"
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"
)

// locator finds where a field was written, so that errors name a file and a line.
type locator struct {
	files []string
	trees map[string]*yaml.Node
}

// at returns "file:line: path" for the deepest part of path found in the last file that has it, or the
// path prefixed by the file list when none has it.
func (l *locator) at(path ...string) string {
	field := joinPath(path)
	bestFile, bestLine, bestDepth := "", 0, 0
	for _, f := range l.files {
		root := l.tree(f)
		if root == nil {
			continue
		}
		line, depth := find(root, path)
		if depth > 0 && depth >= bestDepth {
			bestFile, bestLine, bestDepth = f, line, depth
		}
	}
	if bestFile == "" {
		if len(l.files) == 1 {
			return fmt.Sprintf("%s: %s", rel(l.files[0]), field)
		}
		return fmt.Sprintf("%v: %s", relAll(l.files), field)
	}
	return fmt.Sprintf("%s:%d: %s", rel(bestFile), bestLine, field)
}

func (l *locator) tree(f string) *yaml.Node {
	if l.trees == nil {
		l.trees = map[string]*yaml.Node{}
	}
	if n, ok := l.trees[f]; ok {
		return n
	}
	var doc yaml.Node
	b, err := os.ReadFile(f)
	if err == nil {
		err = yaml.Unmarshal(b, &doc)
	}
	var root *yaml.Node
	if err == nil && len(doc.Content) > 0 {
		root = doc.Content[0]
	}
	l.trees[f] = root
	return root
}

// find walks path from n and returns the line of the deepest key found and how many parts matched.
func find(n *yaml.Node, path []string) (line, depth int) {
	for _, p := range path {
		if n.Kind != yaml.MappingNode {
			return line, depth
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == p {
				line, depth, n, found = n.Content[i].Line, depth+1, n.Content[i+1], true
				break
			}
		}
		if !found {
			return line, depth
		}
	}
	return line, depth
}

func joinPath(path []string) string {
	s := ""
	for i, p := range path {
		if i > 0 {
			s += "."
		}
		s += p
	}
	return s
}

func rel(f string) string {
	wd, err := os.Getwd()
	if err != nil {
		return f
	}
	if r, err := filepath.Rel(wd, f); err == nil && len(r) < len(f) {
		return r
	}
	return f
}

func relAll(fs []string) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = rel(f)
	}
	return out
}
