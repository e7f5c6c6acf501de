package verify

import (
	"reflect"
	"testing"
)

func TestDrift(t *testing.T) {
	const (
		a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		b = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	)
	verified := map[string]string{
		"web":    "127.0.0.1:5000/web:v1@" + a,
		"api":    "127.0.0.1:5000/api:v1@" + a,
		"db":     "127.0.0.1:5000/db:v1@" + a,
		"worker": "127.0.0.1:5000/worker:v1@" + a,
		"cache":  "127.0.0.1:5000/cache:v1@" + a,
	}
	running := []Running{
		{Service: "web", Image: "127.0.0.1:5000/web:v1@" + a},     // as deployed
		{Service: "cache", Image: "127.0.0.1:5000/cache:v2@" + a}, // tag differs, digest same: fine
		{Service: "api", Image: "127.0.0.1:5000/api:v1@" + b, // docker service update --image
			Labels: map[string]string{"sawmill.verified": "true", "sawmill.digest": b}}, // forged label
		{Service: "db", Image: "127.0.0.1:5000/db:v1"},                   // not pinned
		{Service: "worker", Image: "127.0.0.1:5000/evil/worker:v1@" + a}, // same digest, other repo
		{Service: "rogue", Image: "127.0.0.1:5000/rogue:v1@" + a,
			Labels: map[string]string{"sawmill.verified": "true"}}, // created outside the agent
	}
	got := Drift(running, verified)
	var names []string
	for _, d := range got {
		names = append(names, d.Service+": "+d.Reason)
	}
	want := []string{
		"api: running digest differs from the verified digest",
		"db: running image is not pinned to a digest",
		"rogue: no verified image recorded for the service",
		"worker: running image is from another repository than the verified one",
	}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("got\n%q\nwant\n%q", names, want)
	}
}
