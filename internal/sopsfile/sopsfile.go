// Package sopsfile decrypts the SOPS-encrypted files a release carries, with the agent's age identity, for
// compose secrets. Its user is cmd/sawmill-sops, the helper the agent runs (the SOPS library links every cloud
// KMS SDK, which the agent does not link); internal/compose asks for the values through compose.Options.SOPS.
//
// It uses the SOPS library (github.com/getsops/sops/v3: its stores parse the file, its tree decryption and
// AES-GCM cipher decrypt the values and check the file's MAC) and its age key source (filippo.io/age) for the
// data key. It does not use sops's decrypt package: that reaches every key service (AWS, GCP, Azure and
// HuaweiCloud KMS, Vault, PGP and the keyservice's gRPC server) and reads identities from the environment and
// the user's home; here the data key is asked only of the age identity the agent's configuration names, through
// a key-service client that knows age alone. Only age recipients decrypt: a file whose data key only a KMS
// or PGP key opens is an error.
//
// The file's extension says its format: .yaml/.yml, .json, .env (dotenv), anything else SOPS's binary format
// (internal/compose decides which secret files are SOPS-encrypted: compose.IsSOPSFile, x-sawmill-sops).
// Decrypted values stay in memory: the caller puts them in Swarm secrets, and the Redactor it is given (or the
// learner of SetLearner) learns every value decrypted. SOPS's own loggers are silenced (they would write to stderr, unredacted).
//
// It imports the SOPS library, filippo.io/age (through it), internal/redact and internal/fault.
package sopsfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/aes"
	sopsage "github.com/getsops/sops/v3/age"
	"github.com/getsops/sops/v3/config"
	"github.com/getsops/sops/v3/keyservice"
	"github.com/getsops/sops/v3/logging"
	"github.com/getsops/sops/v3/stores/dotenv"
	sopsjson "github.com/getsops/sops/v3/stores/json"
	sopsyaml "github.com/getsops/sops/v3/stores/yaml"
	"google.golang.org/grpc"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/redact"
)

func init() {
	// SOPS logs with its own loggers to stderr; the agent's output is redacted, theirs would not be.
	for _, l := range logging.Loggers {
		l.SetOutput(io.Discard)
	}
}

// Decrypter decrypts SOPS files with one age identity.
type Decrypter struct {
	ids   sopsage.ParsedIdentities
	learn func(values ...string) // nil: no value is learned
}

// Load reads the agent's age identity file (one or more AGE-SECRET-KEY-1... lines, # comments). The file must
// be readable by its owner only: a group- or world-readable key file is refused. r learns every value
// decrypted (nil: none is learned).
func Load(path string, r *redact.Redactor) (*Decrypter, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sops.age_key_file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("sops.age_key_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("sops.age_key_file: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("sops.age_key_file: %s is readable by others (mode %04o): it must be readable by the agent only (chmod 600 or 400)", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("sops.age_key_file: %w", err)
	}
	return New(string(b), r)
}

// New makes a Decrypter of identities (the contents of an age identity file).
func New(identities string, r *redact.Redactor) (*Decrypter, error) {
	var ids sopsage.ParsedIdentities
	if err := ids.Import(identities); err != nil {
		// The parser's message may quote the file's content.
		return nil, errors.New("sops.age_key_file: not an age identity file (AGE-SECRET-KEY-1... lines)")
	}
	if len(ids) == 0 {
		return nil, errors.New("sops.age_key_file: no age identity in the file")
	}
	d := &Decrypter{ids: ids}
	if r != nil {
		d.learn = r.Add
	}
	return d, nil
}

// SetLearner makes add, instead of the Redactor given to Load or New, learn every value decrypted from now on
// (as the Redactor would: each scalar of the file, and the whole file when it is asked for); nil: none.
func (d *Decrypter) SetLearner(add func(values ...string)) { d.learn = add }

// storeFor is the SOPS store for a file name: YAML, JSON, dotenv, or SOPS's binary format (true).
func storeFor(name string) (sops.Store, bool) {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml":
		return sopsyaml.NewStore(&config.YAMLStoreConfig{}), false
	case ".json":
		return sopsjson.NewStore(&config.JSONStoreConfig{}), false
	case ".env":
		return dotenv.NewStore(&config.DotenvStoreConfig{}), false
	}
	return sopsjson.NewBinaryStore(&config.JSONBinaryStoreConfig{}), true
}

// Value decrypts data, the SOPS file name (its name chooses the format), checks its MAC, and returns the value
// at key: a path of mapping keys separated by '.' (a number indexes a list; a top-level key is looked up as
// written first, so a dotenv name with dots works). An empty key is the whole file, decrypted, in its format
// (a binary file: its bytes). Every error is fault.Invalid and names the file; none holds a value.
func (d *Decrypter) Value(name string, data []byte, key string) ([]byte, error) {
	out, err := d.value(name, data, key)
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("sops file %s: %w", name, err))
	}
	return out, nil
}

func (d *Decrypter) value(name string, data []byte, key string) ([]byte, error) {
	st, binary := storeFor(name)
	if binary && key != "" {
		return nil, fmt.Errorf("x-sawmill-sops key %q: a binary SOPS file has one value (give no key)", key)
	}
	tree, err := st.LoadEncryptedFile(data)
	if err != nil {
		// Not wrapped: a parser's message can quote the file, and a file that is not encrypted holds values
		// in the clear.
		return nil, fmt.Errorf("not a SOPS-encrypted %s file (no valid sops metadata, or not valid %s)", st.Name(), st.Name())
	}
	ageKeys := 0
	for _, g := range tree.Metadata.KeyGroups {
		for _, k := range g {
			if _, ok := k.(*sopsage.MasterKey); ok {
				ageKeys++
			}
		}
	}
	if ageKeys == 0 {
		return nil, errors.New("encrypted for no age recipient (the agent decrypts with its age identity only)")
	}
	dataKey, err := tree.Metadata.GetDataKeyWithKeyServices([]keyservice.KeyServiceClient{ageService{ids: d.ids}}, nil)
	if err != nil {
		return nil, errors.New("the agent's age identity is not a recipient of this file (or its data key is damaged)")
	}
	cipher := aes.NewCipher()
	mac, err := tree.Decrypt(dataKey, cipher)
	if err != nil {
		return nil, errors.New("cannot decrypt its values: the file was modified")
	}
	stored, err := cipher.Decrypt(tree.Metadata.MessageAuthenticationCode, dataKey, tree.Metadata.LastModified.Format(time.RFC3339))
	if err != nil || stored != mac {
		return nil, errors.New("its MAC does not match its content: the file was modified")
	}
	if d.learn != nil {
		learn(d.learn, tree.Branches)
	}
	if key == "" {
		out, err := st.EmitPlainFile(tree.Branches)
		if err != nil {
			return nil, errors.New("cannot write the decrypted file in its format")
		}
		if d.learn != nil && !binary {
			d.learn(string(out))
		}
		return out, nil
	}
	if len(tree.Branches) == 0 {
		return nil, fmt.Errorf("x-sawmill-sops key %q: the file is empty", key)
	}
	return lookup(tree.Branches[0], key)
}

// lookup finds key in a decrypted tree.
func lookup(branch sops.TreeBranch, key string) ([]byte, error) {
	var v any = branch
	if item, ok := find(branch, key); ok {
		v = item
	} else {
		for _, part := range strings.Split(key, ".") {
			switch node := v.(type) {
			case sops.TreeBranch:
				item, ok := find(node, part)
				if !ok {
					return nil, fmt.Errorf("x-sawmill-sops key %q: no %q in the file", key, part)
				}
				v = item
			case []any:
				i, err := strconv.Atoi(part)
				if err != nil || i < 0 || i >= len(node) {
					return nil, fmt.Errorf("x-sawmill-sops key %q: %q is not an index of a list of %d", key, part, len(node))
				}
				v = node[i]
			default:
				return nil, fmt.Errorf("x-sawmill-sops key %q: %q is below a single value", key, part)
			}
		}
	}
	switch v.(type) {
	case sops.TreeBranch, []any:
		return nil, fmt.Errorf("x-sawmill-sops key %q: a mapping or list, not a single value", key)
	}
	b, err := sops.ToBytes(v)
	if err != nil {
		return nil, fmt.Errorf("x-sawmill-sops key %q: not a single value", key)
	}
	return b, nil
}

func find(b sops.TreeBranch, key string) (any, bool) {
	for _, item := range b {
		if k, ok := item.Key.(string); ok && k == key {
			return item.Value, true
		}
	}
	return nil, false
}

// learn teaches add every scalar of a decrypted tree.
func learn(add func(values ...string), branches sops.TreeBranches) {
	var walk func(v any)
	walk = func(v any) {
		switch n := v.(type) {
		case sops.TreeBranch:
			for _, item := range n {
				walk(item.Value)
			}
		case []any:
			for _, x := range n {
				walk(x)
			}
		case sops.Comment:
		default:
			if b, err := sops.ToBytes(n); err == nil {
				add(string(b))
			}
		}
	}
	for _, b := range branches {
		walk(b)
	}
}

// ageService is a SOPS key service that knows age only: the data key is decrypted by SOPS's age key source
// with the agent's identities, and never with a key from the environment or the user's files.
type ageService struct{ ids sopsage.ParsedIdentities }

func (s ageService) Decrypt(_ context.Context, in *keyservice.DecryptRequest, _ ...grpc.CallOption) (*keyservice.DecryptResponse, error) {
	ak := in.GetKey().GetAgeKey()
	if ak == nil {
		return nil, errors.New("not an age key")
	}
	mk := &sopsage.MasterKey{Recipient: ak.Recipient, EncryptedKey: string(in.GetCiphertext())}
	s.ids.ApplyToMasterKey(mk)
	p, err := mk.Decrypt()
	if err != nil {
		return nil, err
	}
	return &keyservice.DecryptResponse{Plaintext: p}, nil
}

// Encrypt encrypts a data key for an age recipient (SOPS's age key source; the tests encrypt with it).
func (s ageService) Encrypt(_ context.Context, in *keyservice.EncryptRequest, _ ...grpc.CallOption) (*keyservice.EncryptResponse, error) {
	ak := in.GetKey().GetAgeKey()
	if ak == nil {
		return nil, errors.New("not an age key")
	}
	mk, err := sopsage.MasterKeyFromRecipient(ak.Recipient)
	if err != nil {
		return nil, err
	}
	if err := mk.Encrypt(in.GetPlaintext()); err != nil {
		return nil, err
	}
	return &keyservice.EncryptResponse{Ciphertext: mk.EncryptedDataKey()}, nil
}
