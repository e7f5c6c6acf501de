package release

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/stack"
)

// RecordRepository is the repository, under the registry path, that holds the channel
// records: <registry>/sawmill-release:release-<ref slug> is the release.json of the ref's last
// published release. No image of the repository may have this name.
const RecordRepository = "sawmill-release"

// RecordRef is the reference of a channel's record.
func RecordRef(registry, channel string) string {
	return registry + "/" + RecordRepository + ":" + channel
}

// Record is a channel record read from the registry.
type Record struct {
	Digest  string   // manifest digest of the record: what compare-and-swap compares
	Release *Release // the release.json it holds
}

// ReadRecord reads the record at ref; errors.Is(err, ErrNotFound) when the tag does not exist.
func (o OCI) ReadRecord(ctx context.Context, ref string) (Record, error) {
	r, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return Record{}, fmt.Errorf("parse %s: %w", ref, err)
	}
	img, err := remote.Image(r, o.opts(ctx)...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return Record{}, fmt.Errorf("%s: %w", ref, ErrNotFound)
		}
		return Record{}, fmt.Errorf("read %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", ref, err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		return Record{}, fmt.Errorf("read %s: not a release record (want one layer): %v", ref, err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", ref, err)
	}
	defer rc.Close()
	data, err := fileFromTar(rc, manifest.FileName)
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", ref, err)
	}
	rel, err := ParseRecord(data)
	if err != nil {
		return Record{}, fmt.Errorf("read %s: %w", ref, err)
	}
	return Record{Digest: d.String(), Release: rel}, nil
}

// ParseRecord decodes a channel record's release.json and checks what a later pipeline relies
// on: the schema version, the commit, and a digest for every image.
func ParseRecord(data []byte) (*Release, error) {
	var rel Release
	if err := json.Unmarshal(data, &rel); err != nil {
		return nil, fmt.Errorf("%s: %w", manifest.FileName, err)
	}
	if rel.SchemaVersion != manifest.SchemaVersion {
		return nil, fmt.Errorf("%s: schema_version %d, want %d", manifest.FileName, rel.SchemaVersion, manifest.SchemaVersion)
	}
	if rel.Commit == "" {
		return nil, fmt.Errorf("%s: no commit", manifest.FileName)
	}
	for n, img := range rel.Images {
		if !stack.IsDigest(img.Digest) {
			return nil, fmt.Errorf("%s: image %s: digest %q is not sha256:<64 hex>", manifest.FileName, n, img.Digest)
		}
	}
	return &rel, nil
}

// WriteRecord pushes release.json as the record at ref (a one-layer OCI image whose layer is
// a tar holding release.json; the manifest is annotated with the commit) and returns the
// record's digest.
func (o OCI) WriteRecord(ctx context.Context, ref string, releaseJSON []byte, commit string) (string, error) {
	r, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", ref, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: manifest.FileName, Mode: 0o644, Size: int64(len(releaseJSON)), Typeflag: tar.TypeReg}); err != nil {
		return "", fmt.Errorf("record %s: %w", ref, err)
	}
	if _, err := tw.Write(releaseJSON); err != nil {
		return "", fmt.Errorf("record %s: %w", ref, err)
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("record %s: %w", ref, err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1),
		static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
	if err != nil {
		return "", fmt.Errorf("record %s: %w", ref, err)
	}
	img = mutate.Annotations(img, map[string]string{
		"org.opencontainers.image.revision": commit,
		"org.opencontainers.image.title":    "sawmill release record",
	}).(v1.Image)
	if err := remote.Write(r, img, o.opts(ctx)...); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("record %s: %w", ref, err)
	}
	return d.String(), nil
}

func fileFromTar(r io.Reader, file string) ([]byte, error) {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("no %s in the record", file)
		}
		if err != nil {
			return nil, err
		}
		if h.Name == file {
			return io.ReadAll(io.LimitReader(tr, 16<<20))
		}
	}
}
