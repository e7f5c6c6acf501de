# Unit tests of the default policies. `go test ./internal/policy/` runs them through OPA's tester;
# `opa test policies/` runs them too.
package main_test

import data.main

digest := "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

# good is a service every default rule accepts.
good := {
	"name": "shop_api",
	"key": "api",
	"labels": {},
	"exceptions": {},
	"image": {
		"ref": sprintf("registry.example/shop/api:1@%s", [digest]),
		"registry": "registry.example",
		"repository": "shop/api",
		"tag": "1",
		"digest": digest,
		"pinned": true,
		"signature": {"status": "verified", "signer": "ci"},
	},
	"dropped": [],
	"env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "DB_PASSWORD_FILE", "value": "/run/secrets/db_password"}],
	"ports": [],
	"mounts": [{"type": "volume", "source": "shop_data", "target": "/data", "read_only": false}],
	"secrets": [{"name": "shop_db_password-abc", "target": "db_password"}],
	"configs": [],
	"capabilities": {"add": [], "drop": ["ALL"]},
	"mode": "replicated",
	"replicas": 2,
	"healthcheck": {"disabled": false, "interval_seconds": 2, "timeout_seconds": 1, "start_period_seconds": 0, "retries": 3},
	"resources": {"limit_cpus": 0.5, "limit_memory_bytes": 67108864, "reserve_cpus": 0, "reserve_memory_bytes": 0},
	"restart_policy": {"condition": "on-failure", "max_attempts": 3},
	"update_config": {"failure_action": "rollback", "monitor_seconds": 10, "parallelism": 1, "order": "start-first"},
	"spec": {},
}

edge := object.union(good, {
	"key": "nginx",
	"name": "shop_nginx",
	"labels": {"io.sawmill.role": "edge"},
	"ports": [
		{"published": 80, "target": 8080, "protocol": "tcp", "mode": "ingress"},
		{"published": 443, "target": 8443, "protocol": "tcp", "mode": "ingress"},
	],
})

doc(services) := {
	"kind": "sawmill.io/stack/v1",
	"stack": "shop",
	"environment": "staging",
	"config": {"allowed_registries": ["registry.example"], "tier": "staging", "grants": [{"rule": "edge", "service": "nginx"}], "allowed_host_paths": []},
	"services": services,
	"networks": [],
	"secrets": [],
	"configs": [],
	"warnings": [],
}

with_patch(patch) := doc([object.union(good, patch)])

# with_config changes the platform's side of the document (tier, grants, allowed host paths).
with_config(inp, cfg) := object.union(inp, {"config": object.union(inp.config, cfg)})

grant(rule) := {"grants": [{"rule": rule, "service": "api"}]}

denies contains d if {
	some name, set in main
	regex.match(`^(deny|violation)(_[a-zA-Z0-9]+)*$`, name)
	some d in set
}

warns contains d if {
	some name, set in main
	regex.match(`^warn(_[a-zA-Z0-9]+)*$`, name)
	some d in set
}

deny_rules contains d.rule if some d in denies

warn_rules contains d.rule if some d in warns

exempt(rule) := {"labels": {sprintf("io.sawmill.exception.%s", [rule]): "needed"}, "exceptions": {rule: "because the test says so"}}

test_good_services_pass if {
	count(denies) == 0 with input as doc([good, edge])
	count(warns) == 0 with input as doc([good, edge])
}

test_only_edge_publishes if {
	deny_rules == {"published_ports"} with input as with_patch({"ports": [{"published": 8080, "target": 8080, "protocol": "tcp", "mode": "host"}]})
}

test_edge_only_80_443 if {
	deny_rules == {"edge_ports"} with input as doc([object.union(edge, {"ports": [{"published": 8443, "target": 8443, "protocol": "tcp", "mode": "host"}]})])
}

test_published_port_exempted if {
	inp := with_config(with_patch(object.union(exempt("published_ports"), {"ports": [{"published": 8080, "target": 8080, "protocol": "tcp", "mode": "host"}]})), grant("published_ports"))
	count(denies) == 0 with input as inp
	warn_rules == {"exception"} with input as inp
}

# A release only asks for an exception; the platform grants it. Asked and not granted: the rule still denies,
# and the request is refused naming the grant needed.
test_exception_needs_a_grant if {
	asked := with_patch(object.union(exempt("published_ports"), {"ports": [{"published": 8080, "target": 8080, "protocol": "tcp", "mode": "host"}]}))
	deny_rules == {"published_ports", "exception_not_granted"} with input as asked
	some d in denies with input as asked
	d.rule == "exception_not_granted"
	contains(d.msg, "grants: [{rule: published_ports, stack: shop, service: api}]")

	# a grant for another service or another rule does not count
	other := with_config(asked, {"grants": [{"rule": "published_ports", "service": "web"}, {"rule": "privileged", "service": "api"}]})
	deny_rules == {"published_ports", "exception_not_granted"} with input as other

	# a grant for every service of the stack does
	count(denies) == 0 with input as with_config(asked, {"grants": [{"rule": "published_ports", "service": "*"}]})

	# the pipeline's check cannot know the agent's grants: a warning naming the grant
	pre := with_config(asked, {"pre_release": "registry.example/shop"})
	count(denies) == 0 with input as pre
	warn_rules == {"exception", "exception_grant_needed"} with input as pre
}

# Any service can put io.sawmill.role: edge on itself; only a granted one is the edge.
test_edge_role_needs_a_grant if {
	claimed := with_patch({"labels": {"io.sawmill.role": "edge"}, "ports": [{"published": 443, "target": 8443, "protocol": "tcp", "mode": "host"}]})
	deny_rules == {"published_ports", "exception_not_granted"} with input as claimed
	count(denies) == 0 with input as with_config(claimed, grant("edge"))
}

# The policies' own grant cannot be exempted by a label.
test_grant_rule_cannot_be_exempted if {
	inp := with_patch(object.union(exempt("exception_not_granted"), {"labels": {"io.sawmill.role": "edge"}}))
	"exception_not_granted" in deny_rules with input as inp
}

test_privileged if {
	deny_rules == {"privileged"} with input as with_patch({"dropped": [{"field": "privileged", "value": "true"}]})
}

test_host_namespaces if {
	deny_rules == {"host_network", "host_pid", "host_ipc"} with input as with_patch({"dropped": [
		{"field": "ipc", "value": "host"},
		{"field": "network_mode", "value": "host"},
		{"field": "pid", "value": "host"},
	]})
}

test_other_dropped_keys_warn if {
	inp := with_patch({"dropped": [{"field": "container_name", "value": "x"}, {"field": "pid", "value": "service:db"}]})
	count(denies) == 0 with input as inp
	warn_rules == {"dropped_key"} with input as inp
}

test_host_network_through_swarm if {
	hostnet := {"spec": {"TaskTemplate": {"Networks": [{"Target": "host"}]}}}
	deny_rules == {"host_network"} with input as with_patch(hostnet)
	count(denies) == 0 with input as with_patch({"spec": {"TaskTemplate": {"Networks": [{"Target": "backend"}]}}})
	count(denies) == 0 with input as with_config(with_patch(object.union(hostnet, exempt("host_network"))), grant("host_network"))
}

test_capabilities if {
	deny_rules == {"capabilities"} with input as with_patch({"capabilities": {"add": ["CAP_SYS_ADMIN"], "drop": []}})
	count(denies) == 0 with input as with_patch({"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": []}})
}

test_docker_socket_and_exception if {
	sock := {"mounts": [{"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock", "read_only": true}]}
	allowed := {"allowed_host_paths": ["/var/run/docker.sock"]}
	deny_rules == {"docker_socket", "host_path"} with input as with_patch(sock)
	deny_rules == {"docker_socket"} with input as with_config(with_patch(sock), allowed)
	count(denies) == 0 with input as with_config(with_patch(object.union(sock, exempt("docker_socket"))), object.union(allowed, grant("docker_socket")))
}

test_host_root if {
	everywhere := {"allowed_host_paths": ["/"]}
	deny_rules == {"host_root"} with input as with_config(with_patch({"mounts": [{"type": "bind", "source": "/", "target": "/host", "read_only": true}]}), everywhere)
	deny_rules == {"host_root"} with input as with_config(with_patch({"mounts": [{"type": "bind", "source": "/etc/", "target": "/host", "read_only": true}]}), everywhere)
	deny_rules == {"host_root"} with input as with_config(with_patch({"mounts": [{"type": "bind", "source": "/proc/1", "target": "/p", "read_only": true}]}), everywhere)
	deny_rules == {"host_root"} with input as with_config(with_patch({"mounts": [{"type": "bind", "source": "/etc/cron.d", "target": "/c", "read_only": false}]}), everywhere)
	deny_rules == {"host_root"} with input as with_config(with_patch({"mounts": [{"type": "bind", "source": "/root/.ssh", "target": "/k", "read_only": true}]}), everywhere)
	count(denies) == 0 with input as with_config(with_patch({"mounts": [{"type": "bind", "source": "/srv/data", "target": "/data", "read_only": false}]}), everywhere)
}

# Bind mounts by allow-list: none by default, so no spelling and no unknown socket gets through.
bind(src) := with_patch({"mounts": [{"type": "bind", "source": src, "target": "/x", "read_only": true}]})

test_host_path_allow_list if {
	deny_rules == {"host_path"} with input as bind("/srv/data")
	deny_rules == {"host_path"} with input as bind("/run/containerd/containerd.sock")
	allowed := {"allowed_host_paths": ["/srv/data"]}
	count(denies) == 0 with input as with_config(bind("/srv/data"), allowed)
	count(denies) == 0 with input as with_config(bind("/srv/data/sub"), allowed)
	deny_rules == {"host_path"} with input as with_config(bind("/srv/database"), allowed)
	deny_rules == {"host_path"} with input as with_config(bind("/srv"), allowed)
	# the pipeline's check cannot know the agents' allow-list: a warning naming the setting needed
	pre := {"pre_release": "registry.example"}
	count(denies) == 0 with input as with_config(bind("/srv/data"), pre)
	warn_rules == {"host_path_allow_needed"} with input as with_config(bind("/srv/data"), pre)
	count(warns) == 0 with input as with_config(bind("/srv/data"), object.union(pre, allowed))
	# named volumes and tmpfs are not host paths
	count(denies) == 0 with input as with_patch({"mounts": [{"type": "volume", "source": "data", "target": "/d"}, {"type": "tmpfs", "source": "", "target": "/t"}]})
}

test_digest if {
	deny_rules == {"image_digest"} with input as with_patch({"image": {"ref": "registry.example/shop/api:1", "pinned": false, "digest": ""}})
}

test_signature if {
	deny_rules == {"image_signature"} with input as with_patch({"image": {"signature": {"status": "unverified"}}})
	inp := with_patch({"image": {"signature": {"status": "unknown"}}})
	count(denies) == 0 with input as inp
	warn_rules == {"signature_unknown"} with input as inp
	deny_rules == {"image_signature"} with input as with_config(inp, {"tier": "production"})
	# the tier decides, never the environment's name
	count(denies) == 0 with input as object.union(inp, {"environment": "production"})
	deny_rules == {"image_signature"} with input as with_config(object.union(inp, {"environment": "prod"}), {"tier": "production"})
}

# The pipeline's check of the repository's files (--pre-release REGISTRY): the repository's images are
# pinned by the release, signatures are verified when the agent deploys; nothing else is waived.
test_pre_release if {
	unpinned := with_patch({"image": {"ref": "registry.example/shop/api:1", "pinned": false, "digest": "", "signature": {"status": "unknown"}}})
	pre := with_config(unpinned, {"tier": "production", "pre_release": "registry.example/shop"})
	count(denies) == 0 with input as pre
	warn_rules == {"signature_at_deploy"} with input as pre
	# an image from elsewhere is still judged
	other := object.union(pre, {"services": [object.union(pre.services[0], {"image": object.union(pre.services[0].image, {"ref": "registry.example/other/api:1"})})]})
	deny_rules == {"image_digest"} with input as other
	# a failed signature is still a deny
	failed := object.union(pre, {"services": [object.union(pre.services[0], {"image": object.union(pre.services[0].image, {"signature": {"status": "unverified"}})})]})
	deny_rules == {"image_signature"} with input as failed
	# without --pre-release nothing changes
	deny_rules == {"image_digest", "image_signature"} with input as with_config(unpinned, {"tier": "production"})
}

test_signature_cannot_be_exempted if {
	inp := with_patch(object.union(exempt("image_signature"), {"image": {"signature": {"status": "unverified"}}}))
	deny_rules == {"image_signature"} with input as inp
	some w in warns with input as inp
	contains(w.msg, "cannot be exempted")
}

test_registry if {
	inp := with_patch({"image": {"registry": "docker.io", "repository": "library/nginx"}})
	deny_rules == {"image_registry"} with input as inp
	prefixed := object.union(inp, {"config": {"allowed_registries": ["docker.io/library"]}})
	count(denies) == 0 with input as prefixed
	unconfigured := object.union(inp, {"config": {"allowed_registries": []}})
	count(denies) == 0 with input as unconfigured
	warn_rules == {"registry_unchecked"} with input as unconfigured
}

test_env_credentials if {
	inp := with_patch({"env": [
		{"name": "POSTGRES_PASSWORD", "value": "hunter2"},
		{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
		{"name": "GITLAB_TOKEN", "value": "glpat"},
	]})
	deny_rules == {"env_credentials"} with input as inp
	count(denies) == 3 with input as inp
	msgs := concat("\n", [d.msg | some d in denies]) with input as inp
	not contains(msgs, "hunter2")
	not contains(msgs, "glpat")
}

test_env_not_credentials if {
	count(denies) == 0 with input as with_patch({"env": [
		{"name": "KAFKA_KEY_SERIALIZER", "value": "string"},
		{"name": "DB_PASSWORD_FILE", "value": "/run/secrets/db"},
		{"name": "API_TOKEN", "value": ""},
		{"name": "PWD", "value": "/app"},
	]})
}

test_secret_file_path if {
	warn_rules == {"secret_file_path"} with input as with_patch({"env": [{"name": "DB_PASSWORD_FILE", "value": "/etc/pw"}]})
}

test_resource_limits if {
	inp := with_patch({"resources": {"limit_cpus": 0, "limit_memory_bytes": 0}})
	deny_rules == {"resource_limits"} with input as inp
	count(denies) == 2 with input as inp
}

test_healthcheck if {
	deny_rules == {"healthcheck"} with input as with_patch({"healthcheck": null})
	deny_rules == {"healthcheck"} with input as with_patch({"healthcheck": {"disabled": true}})
	count(denies) == 0 with input as with_patch({"healthcheck": null, "mode": "replicated-job"})
}

test_restart_policy_warns if {
	inp := with_patch({"restart_policy": null})
	count(denies) == 0 with input as inp
	warn_rules == {"restart_policy"} with input as inp
}

test_update_rollback if {
	deny_rules == {"update_rollback"} with input as with_patch({"update_config": null})
	deny_rules == {"update_rollback"} with input as with_patch({"update_config": {"failure_action": "pause"}})
	deny_rules == {"update_rollback"} with input as with_patch({"update_config": {"failure_action": ""}})
}

test_update_monitor_covers_healthcheck if {
	# interval 2s x retries 3 = 6s: a 5s window is too short, 6s is enough.
	deny_rules == {"update_monitor"} with input as with_patch({"update_config": {"monitor_seconds": 5}})
	count(denies) == 0 with input as with_patch({"update_config": {"monitor_seconds": 6}})

	# Docker's defaults (30s x 3) plus the start period.
	deny_rules == {"update_monitor"} with input as with_patch({
		"healthcheck": {"interval_seconds": 0, "retries": 0, "start_period_seconds": 10},
		"update_config": {"monitor_seconds": 90},
	})
	count(denies) == 0 with input as with_patch({
		"healthcheck": {"interval_seconds": 0, "retries": 0, "start_period_seconds": 10},
		"update_config": {"monitor_seconds": 100},
	})
}

test_exception_without_reason_is_ignored if {
	inp := with_patch({
		"exceptions": {"privileged": " "},
		"dropped": [{"field": "privileged", "value": "true"}],
	})
	deny_rules == {"privileged"} with input as inp
	some w in warns with input as inp
	contains(w.msg, "no reason")
}

test_messages_name_service_and_rule if {
	some d in denies with input as with_patch({"dropped": [{"field": "privileged", "value": "true"}]})
	d.service == "api"
	d.rule == "privileged"
	startswith(d.msg, "api: ")
}
