// Command sawmill-sops decrypts SOPS-encrypted secret files for the Sawmill agent, out of the agent's process.
//
// The SOPS library (github.com/getsops/sops/v3, through internal/sopsfile) links every cloud KMS SDK of SOPS;
// in the agent they cost ~40 MB of binary, start-up time and memory for as long as it runs. The agent runs
// this helper only when a release has a SOPS-encrypted secret, and talks to it over stdin and stdout alone
// (nothing is written to disk):
//
//   - stdin: one or more JSON requests, one after the other (a JSON stream; one per line is fine):
//     {"age_key_file": "/path/age.key", "name": "stacks/shop/db.sops.yaml", "data": "<base64 of the file>",
//     "key": "db.password"}. name is the file's name (its extension says its format); key a path of
//     mapping keys ("" for the whole file).
//   - stdout: one JSON answer per request, in order, one per line: {"value": "<base64>"} or
//     {"error": "..."}. An error names the file and never holds a value (internal/sopsfile's errors). The
//     answer for a whole file (key "") also lists, in "redact", every value of the file (each a substring of
//     the file the agent receives), for the agent's redactor.
//
// It logs nothing; stderr says only what went wrong with the protocol. Exit codes: 0 every request was
// answered (an answer may be an error); 1 the input is not a stream of requests, or stdout failed (answers
// already written stay valid); 2 it was given arguments (it takes none).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sabeiro/sawmill/internal/sopsfile"
)

// Request is one value asked for.
type Request struct {
	AgeKeyFile string `json:"age_key_file"`
	Name       string `json:"name"`
	Data       []byte `json:"data"` // base64 in JSON
	Key        string `json:"key"`
}

// Answer is a request's value, or why there is none.
type Answer struct {
	Value []byte `json:"value,omitempty"` // base64 in JSON
	Error string `json:"error,omitempty"`
	// Redact are the file's values, when the whole file is the value.
	Redact []string `json:"redact,omitempty"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: sawmill-sops < requests (JSON on stdin, answers on stdout; the agent runs it)")
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	err := serve(os.Stdin, out)
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sawmill-sops:", err)
		os.Exit(1)
	}
}

// serve answers every request of in on out, in order.
func serve(in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(out)
	identities := map[string]*sopsfile.Decrypter{} // by age key file, loaded once
	for {
		var req Request
		if err := dec.Decode(&req); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			// Not %w: a JSON error may quote the input, which holds (encrypted) file content.
			return errors.New("stdin: not a stream of JSON requests")
		}
		if err := enc.Encode(answer(identities, req)); err != nil {
			return fmt.Errorf("stdout: %w", err)
		}
	}
}

// answer decrypts one request's value with the identity of its age key file.
func answer(identities map[string]*sopsfile.Decrypter, req Request) Answer {
	if req.AgeKeyFile == "" {
		return Answer{Error: "request: no age_key_file"}
	}
	d, ok := identities[req.AgeKeyFile]
	if !ok {
		var err error
		if d, err = sopsfile.Load(req.AgeKeyFile, nil); err != nil {
			return Answer{Error: err.Error()}
		}
		identities[req.AgeKeyFile] = d
	}
	var learned []string
	d.SetLearner(func(values ...string) { learned = append(learned, values...) })
	defer d.SetLearner(nil)
	v, err := d.Value(req.Name, req.Data, req.Key)
	if err != nil {
		return Answer{Error: err.Error()}
	}
	a := Answer{Value: v}
	if req.Key == "" {
		// Only for a whole file: the other values of a file whose one key is asked for stay here.
		a.Redact = learned
	}
	return a
}
