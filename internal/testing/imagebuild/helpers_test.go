package imagebuild_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// needInstalled skips the test when the host file of a Debian package is absent, or fails it when CI=true
// (CI installs the packages).
func needInstalled(t *testing.T, hostFile, install string) {
	t.Helper()
	if _, err := os.Stat(hostFile); errors.Is(err, fs.ErrNotExist) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing: %s", hostFile, install)
		}
		t.Skipf("%s is missing: %s", hostFile, install)
	}
}

// onceImage builds an image once per test process.
type onceImage struct {
	sync.Once
	img  v1.Image
	err  error
	took time.Duration
}

func (o *onceImage) get(t *testing.T, build func() (v1.Image, error)) v1.Image {
	t.Helper()
	o.Do(func() {
		start := time.Now()
		o.img, o.err = build()
		o.took = time.Since(start)
	})
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o.img
}

// sameBuild checks that a second build gave the same digest, and returns the digest and the size of the
// layers as pushed.
func sameBuild(t *testing.T, img, again v1.Image) (v1.Hash, int64) {
	t.Helper()
	d1, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := again.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("two builds from the same files differ: %s, %s", d1, d2)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var compressed int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		compressed += n
	}
	return d1, compressed
}

// ent is one entry of an image's flattened filesystem.
type ent struct {
	mode     int64
	uid, gid int
	typ      byte
	link     string
	data     []byte
}

// imageFiles reads the image's flattened filesystem, checking that every entry has mtime 0. The content is
// kept for the entries under keepUnder; the second result is the size of all files.
func imageFiles(t *testing.T, img v1.Image, keepUnder string) (map[string]ent, int64) {
	t.Helper()
	files := map[string]ent{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var size int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mtime %v", h.Name, h.ModTime)
		}
		e := ent{mode: h.Mode, uid: h.Uid, gid: h.Gid, typ: h.Typeflag, link: h.Linkname}
		if strings.HasPrefix(h.Name, keepUnder) {
			e.data, _ = io.ReadAll(tr)
		}
		size += h.Size
		files[strings.TrimSuffix(h.Name, "/")] = e
	}
	return files, size
}

// swarmObjects creates Swarm objects for one test, with its labels, and removes them when the test ends:
// services first, then what they used (retried while a task still holds it), then the anonymous volumes
// noted with keepVolume.
type swarmObjects struct {
	t       *testing.T
	ctx     context.Context
	dc      *client.Client
	labels  map[string]string
	volumes []string
}

func newSwarmObjects(ctx context.Context, t *testing.T, dc *client.Client) *swarmObjects {
	o := &swarmObjects{t: t, ctx: ctx, dc: dc, labels: map[string]string{"sawmill.test": "imagebuild." + t.Name()}}
	// Registered first, so it runs last: Swarm usually removes a task's anonymous volume with its container.
	t.Cleanup(func() {
		for _, v := range o.volumes {
			removeRetrying(t, "volume", func(ctx context.Context) error {
				_, err := dc.VolumeRemove(ctx, v, client.VolumeRemoveOptions{})
				if err != nil && strings.Contains(strings.ToLower(err.Error()), "no such volume") {
					return nil
				}
				return err
			})
		}
	})
	return o
}

func (o *swarmObjects) secret(name string, data []byte) *swarm.SecretReference {
	sec, err := o.dc.SecretCreate(o.ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{
		Annotations: swarm.Annotations{Name: name, Labels: o.labels}, Data: data,
	}})
	if err != nil {
		o.t.Fatal(err)
	}
	o.t.Cleanup(func() {
		removeRetrying(o.t, "secret", func(ctx context.Context) error {
			_, err := o.dc.SecretRemove(ctx, sec.ID, client.SecretRemoveOptions{})
			return err
		})
	})
	return &swarm.SecretReference{SecretID: sec.ID, SecretName: name}
}

// config creates a config mounted at target with mode.
func (o *swarmObjects) config(name string, data []byte, target string, mode os.FileMode) *swarm.ConfigReference {
	cfg, err := o.dc.ConfigCreate(o.ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: name, Labels: o.labels}, Data: data,
	}})
	if err != nil {
		o.t.Fatal(err)
	}
	o.t.Cleanup(func() {
		removeRetrying(o.t, "config", func(ctx context.Context) error {
			_, err := o.dc.ConfigRemove(ctx, cfg.ID, client.ConfigRemoveOptions{})
			return err
		})
	})
	return &swarm.ConfigReference{
		File:     &swarm.ConfigReferenceFileTarget{Name: target, UID: "0", GID: "0", Mode: mode},
		ConfigID: cfg.ID, ConfigName: name,
	}
}

func (o *swarmObjects) network(name string) string {
	nw, err := o.dc.NetworkCreate(o.ctx, name, client.NetworkCreateOptions{Driver: "overlay", Labels: o.labels})
	if err != nil {
		o.t.Fatal(err)
	}
	o.t.Cleanup(func() {
		removeRetrying(o.t, "network", func(ctx context.Context) error {
			_, err := o.dc.NetworkRemove(ctx, nw.ID, client.NetworkRemoveOptions{})
			return err
		})
	})
	return nw.ID
}

func (o *swarmObjects) service(spec swarm.ServiceSpec) string {
	spec.Labels = o.labels
	svc, err := o.dc.ServiceCreate(o.ctx, client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		o.t.Fatal(err)
	}
	o.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := o.dc.ServiceRemove(ctx, svc.ID, client.ServiceRemoveOptions{}); err != nil {
			o.t.Errorf("remove service %s: %v", spec.Name, err)
		}
	})
	return svc.ID
}

// keepVolume notes the anonymous volume the container mounts at dest, to be removed at the end.
func (o *swarmObjects) keepVolume(containerID, dest string) {
	ci, err := o.dc.ContainerInspect(o.ctx, containerID, client.ContainerInspectOptions{})
	if err != nil {
		o.t.Fatal(err)
	}
	for _, m := range ci.Container.Mounts {
		if m.Type == mount.TypeVolume && m.Destination == dest {
			o.volumes = append(o.volumes, m.Name)
		}
	}
}

// hostPort publishes target on published of the host (no routing mesh: IPVS is missing on this kernel), with
// DNS round robin instead of a virtual IP.
func hostPort(target, published int) *swarm.EndpointSpec {
	return &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR, Ports: []swarm.PortConfig{{
		Protocol: "tcp", TargetPort: uint32(target), PublishedPort: uint32(published), PublishMode: swarm.PortConfigPublishModeHost,
	}}}
}

// pgDSN is a pgx connection string to database sawmill on 127.0.0.1:port.
func pgDSN(user, password string, port int) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Path: "/sawmill", RawQuery: "sslmode=disable&connect_timeout=10"}
	return u.String()
}

// waitHealthy waits for the service's task to run with a healthy container and returns the container's id.
func waitHealthy(ctx context.Context, t *testing.T, dc *client.Client, service string) string {
	t.Helper()
	last := ""
	for {
		tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", service)})
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks.Items {
			st := task.Status
			last = string(st.State) + " " + st.Message + " " + st.Err
			switch st.State {
			case swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateComplete:
				msg := last
				if st.ContainerStatus != nil && st.ContainerStatus.ContainerID != "" {
					msg += "\n" + containerLogs(ctx, t, dc, st.ContainerStatus.ContainerID)
				}
				t.Fatalf("task %s: %s", task.ID, msg)
			case swarm.TaskStateRunning:
				if st.ContainerStatus == nil || st.ContainerStatus.ContainerID == "" {
					continue
				}
				ci, err := dc.ContainerInspect(ctx, st.ContainerStatus.ContainerID, client.ContainerInspectOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if h := ci.Container.State.Health; h != nil {
					last += " health " + string(h.Status)
					if h.Status == container.Healthy {
						return st.ContainerStatus.ContainerID
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the service did not become healthy: %s", last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func containerLogs(ctx context.Context, t *testing.T, dc *client.Client, id string) string {
	t.Helper()
	rc, err := dc.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		return out.String() + "\n(logs: " + err.Error() + ")"
	}
	return out.String()
}

// serviceLogs returns the logs of the service's containers.
func serviceLogs(ctx context.Context, t *testing.T, dc *client.Client, service string) string {
	t.Helper()
	tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", service)})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for _, task := range tasks.Items {
		if st := task.Status.ContainerStatus; st != nil && st.ContainerID != "" {
			fmt.Fprintln(&out, containerLogs(ctx, t, dc, st.ContainerID))
		}
	}
	return out.String()
}

// removeRetrying retries a removal that fails while the service's task still holds the object.
func removeRetrying(t *testing.T, what string, remove func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		err := remove(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("remove %s: %v", what, err)
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// secretFile is ref mounted as /run/secrets/<name>, owned by uid with mode.
func secretFile(ref *swarm.SecretReference, name, uid string, mode os.FileMode) *swarm.SecretReference {
	return &swarm.SecretReference{
		File:     &swarm.SecretReferenceFileTarget{Name: name, UID: uid, GID: uid, Mode: mode},
		SecretID: ref.SecretID, SecretName: ref.SecretName,
	}
}
