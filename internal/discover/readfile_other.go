//go:build !unix

package discover

import "os"

func readFile(name string) ([]byte, error) { return os.ReadFile(name) }
