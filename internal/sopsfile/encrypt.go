package sopsfile

import (
	"errors"
	"fmt"
	"time"

	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/aes"
	sopsage "github.com/getsops/sops/v3/age"
	"github.com/getsops/sops/v3/keyservice"
)

// Encrypt encrypts plain (a file in the format name says) for age recipients (age1...), as `sops encrypt
// --age` does, with the SOPS library: the tests make their releases' encrypted files with it.
func Encrypt(name string, plain []byte, recipients ...string) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("sops encrypt: no age recipient")
	}
	st, _ := storeFor(name)
	branches, err := st.LoadPlainFile(plain)
	if err != nil {
		return nil, fmt.Errorf("sops encrypt %s: %w", name, err)
	}
	var group sops.KeyGroup
	for _, r := range recipients {
		mk, err := sopsage.MasterKeyFromRecipient(r)
		if err != nil {
			return nil, fmt.Errorf("sops encrypt: recipient: %w", err)
		}
		group = append(group, mk)
	}
	tree := sops.Tree{Branches: branches, Metadata: sops.Metadata{KeyGroups: []sops.KeyGroup{group}, UnencryptedSuffix: sops.DefaultUnencryptedSuffix, Version: "3.13.3"}}
	dataKey, errs := tree.GenerateDataKeyWithKeyServices([]keyservice.KeyServiceClient{ageService{}})
	if len(errs) > 0 {
		return nil, fmt.Errorf("sops encrypt: %w", errors.Join(errs...))
	}
	cipher := aes.NewCipher()
	mac, err := tree.Encrypt(dataKey, cipher)
	if err != nil {
		return nil, fmt.Errorf("sops encrypt: %w", err)
	}
	tree.Metadata.LastModified = time.Now().UTC()
	if tree.Metadata.MessageAuthenticationCode, err = cipher.Encrypt(mac, dataKey, tree.Metadata.LastModified.Format(time.RFC3339)); err != nil {
		return nil, fmt.Errorf("sops encrypt: %w", err)
	}
	return st.EmitEncryptedFile(tree)
}
