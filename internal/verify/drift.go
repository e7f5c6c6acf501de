package verify

import (
	"errors"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Running is a service as the engine reports it: its name and the image of its current spec
// (`repo:tag@sha256:...` when it was deployed pinned). Labels are carried only to make the point that they
// are never consulted: a label claiming "verified" proves nothing.
type Running struct {
	Service string
	Image   string
	Labels  map[string]string
}

// Drifted is a running service whose image is not the one last verified for it.
type Drifted struct {
	Service string `json:"service"`
	Running string `json:"running"`
	// Verified is the pinned reference last verified for the service, empty when there is none.
	Verified string `json:"verified,omitempty"`
	Reason   string `json:"reason"`
}

// Drift compares running services with the pinned references last verified for them (service name ->
// Result.Pinned) and returns, sorted by service, those that differ: no verified record, an image without a
// digest (the engine may re-resolve a tag), or another repository or digest than the verified one. It is a
// pure function; only the repository and digest count, never tags or labels.
func Drift(running []Running, verified map[string]string) []Drifted {
	var out []Drifted
	for _, s := range running {
		want, ok := verified[s.Service]
		d := Drifted{Service: s.Service, Running: s.Image, Verified: want}
		switch {
		case !ok || want == "":
			d.Reason = "no verified image recorded for the service"
		default:
			repo, dig, err := repoDigest(s.Image)
			wrepo, wdig, werr := repoDigest(want)
			switch {
			case werr != nil:
				d.Reason = "the verified record is not a pinned reference"
			case err != nil:
				d.Reason = "running image is not pinned to a digest"
			case repo != wrepo:
				d.Reason = "running image is from another repository than the verified one"
			case dig != wdig:
				d.Reason = "running digest differs from the verified digest"
			default:
				continue
			}
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

func repoDigest(ref string) (string, string, error) {
	if !strings.Contains(ref, "@") {
		return "", "", errors.New("no digest")
	}
	d, err := name.NewDigest(ref, name.WeakValidation)
	if err != nil {
		return "", "", err
	}
	return d.Context().Name(), d.DigestStr(), nil
}
