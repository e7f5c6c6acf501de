// Command pushrandom pushes a small random image to the reference given as its argument and
// prints the manifest digest. The end-to-end test's buildah stand-in uses it so that builds
// leave real manifests in the test registry.
package main

import (
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pushrandom REF")
		os.Exit(2)
	}
	ref, err := name.ParseReference(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	img, err := random.Image(64, 1)
	if err == nil {
		err = remote.Write(ref, img)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d, err := img.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(d)
}
