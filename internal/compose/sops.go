package compose

import (
	"fmt"
	"path/filepath"
	"strings"
)

// SOPSKey is the compose extension that marks a secret's file as SOPS-encrypted and selects its value: a key
// path ("db.password"), or "" / true for the whole decrypted file.
const SOPSKey = "x-sawmill-sops"

// Decrypter decrypts a SOPS-encrypted file (internal/sopsfile): the value at key of data, the file name (its
// extension says the format); an empty key is the whole file. Its errors name the file and hold no value.
type Decrypter interface {
	Value(name string, data []byte, key string) ([]byte, error)
}

// IsSOPSFile reports whether a file's name says it is SOPS-encrypted: *.sops.yaml, *.sops.yml, *.sops.json,
// *.sops.env.
func IsSOPSFile(name string) bool {
	base := strings.ToLower(filepath.Base(name))
	for _, ext := range []string{".sops.yaml", ".sops.yml", ".sops.json", ".sops.env"} {
		if strings.HasSuffix(base, ext) {
			return true
		}
	}
	return false
}

// sopsSecret says whether a secret's file is SOPS-encrypted (by its name or x-sawmill-sops) and which key
// of it the secret takes.
func sopsSecret(o fileObject) (key string, ok bool, err error) {
	v, marked := o.Extensions[SOPSKey]
	if !marked {
		return "", IsSOPSFile(o.File), nil
	}
	switch v := v.(type) {
	case string:
		return v, true, nil
	case bool:
		if v {
			return "", true, nil
		}
		return "", false, nil
	case nil:
		return "", true, nil
	}
	return "", false, fmt.Errorf("%s: a key path (db.password), or true for the whole file", SOPSKey)
}

// decrypt returns the value of a SOPS-encrypted secret file; data is its content as read from the release.
func (c *converter) decrypt(key string, o fileObject, data []byte) ([]byte, error) {
	sopsKey, ok, err := sopsSecret(o)
	if err != nil {
		return nil, c.errf([]string{"secrets", key, SOPSKey}, "%v", err)
	}
	if !ok {
		return data, nil
	}
	name := o.File
	if c.conf != nil {
		if rel, err := filepath.Rel(c.conf.root, o.File); err == nil && !strings.HasPrefix(rel, "..") {
			name = rel
		}
	}
	if c.sops == nil {
		return nil, c.errf([]string{"secrets", key, "file"}, "%s is SOPS-encrypted: the agent decrypts it with its age identity (sops.age_key_file of agent run's configuration)", name)
	}
	v, err := c.sops.Value(name, data, sopsKey)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.loc.at("secrets", key, "file"), err)
	}
	return v, nil
}
