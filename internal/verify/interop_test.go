package verify

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	ctypes "github.com/sigstore/cosign/v3/pkg/types"
	"github.com/sigstore/sigstore-go/pkg/sign"
)

// cosignCLI finds the cosign CLI ($COSIGN, PATH, $(go env GOPATH)/bin). Missing, the test is skipped, or
// fails under CI=true. Install: go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3
func cosignCLI(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("COSIGN"); p != "" {
		return p
	}
	if p, err := exec.LookPath("cosign"); err == nil {
		return p
	}
	home, _ := os.UserHomeDir()
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("GOPATH"), "bin"), filepath.Join(home, "go", "bin")} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, "cosign"); isExecutable(p) {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("cosign CLI not found (go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3)")
	}
	t.Skip("cosign CLI not found; go install github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3")
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// runCosign runs the CLI offline: a throwaway home and TUF cache, a password from the environment.
func runCosign(t testing.TB, bin, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=test-password", "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"),
		"COSIGN_EXPERIMENTAL=0", "SIGSTORE_NO_CACHE=true")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("cosign %v: %v\n%s", args, err, out.String())
	}
	return out.Bytes()
}

// cosignKeyPair generates cosign.key / cosign.pub in dir with the CLI.
func cosignKeyPair(t testing.TB, bin, dir string) string {
	t.Helper()
	runCosign(t, bin, dir, "generate-key-pair")
	return filepath.Join(dir, "cosign.pub")
}

func TestInteropCosignCLI(t *testing.T) {
	bin := cosignCLI(t)
	reg := newRegistry(t, true)
	dir := t.TempDir()
	pub := cosignKeyPair(t, bin, dir)
	tr, err := TrustPolicy{Rules: []Rule{{Pattern: reg.host + "/**", Authorities: []Authority{{Key: pub}}}}}.Compile()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("CLI signs legacy, the package verifies", func(t *testing.T) {
		d := reg.pushImage(t, "cli/legacy", "v1")
		runCosign(t, bin, dir, "sign", "--key", "cosign.key", "--yes", "--allow-http-registry",
			"--tlog-upload=false", "--use-signing-config=false", "--new-bundle-format=false", d.String())
		r, err := newVerifier(tr, nil).Verify(ctx(t), reg.host+"/cli/legacy:v1")
		mustVerified(t, r, err)
		if r.Format != FormatLegacy {
			t.Errorf("format %s", r.Format)
		}
	})
	t.Run("CLI signs a v3 bundle, the package verifies", func(t *testing.T) {
		d := reg.pushImage(t, "cli/bundle", "v1")
		runCosign(t, bin, dir, "sign", "--key", "cosign.key", "--yes", "--allow-http-registry",
			"--tlog-upload=false", "--use-signing-config=false", "--new-bundle-format=true", d.String())
		r, err := newVerifier(tr, nil).Verify(ctx(t), reg.host+"/cli/bundle:v1")
		mustVerified(t, r, err)
		if r.Format != FormatBundle {
			t.Errorf("format %s", r.Format)
		}
	})
	t.Run("the CLI verifies what the tests sign (legacy)", func(t *testing.T) {
		k := newKey(t)
		d := reg.pushImage(t, "pkg/legacy", "v1")
		signLegacy(t, k, d)
		writeFile(t, filepath.Join(dir, "test.pub"), k.pem)
		runCosign(t, bin, dir, "verify", "--key", "test.pub", "--allow-http-registry", "--insecure-ignore-tlog=true",
			"--new-bundle-format=false", reg.host+"/pkg/legacy:v1")
	})
	t.Run("the CLI verifies what the tests sign (v3 bundle)", func(t *testing.T) {
		kp, pemStr := newBundleKey(t)
		d := reg.pushImage(t, "pkg/bundle", "v1")
		signBundle(t, kp, d, ctypes.CosignSignPredicateType, sign.BundleOptions{})
		writeFile(t, filepath.Join(dir, "bundle.pub"), pemStr)
		runCosign(t, bin, dir, "verify", "--key", "bundle.pub", "--allow-http-registry", "--insecure-ignore-tlog=true",
			"--new-bundle-format=true", reg.host+"/pkg/bundle:v1")
	})
	t.Run("the CLI refuses another key", func(t *testing.T) {
		d := reg.pushImage(t, "cli/other", "v1")
		signLegacy(t, newKey(t), d)
		cmd := exec.Command(bin, "verify", "--key", "cosign.pub", "--allow-http-registry", "--insecure-ignore-tlog=true",
			"--new-bundle-format=false", d.String())
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Fatalf("cosign verify accepted another key's signature:\n%s", out)
		}
	})
}
