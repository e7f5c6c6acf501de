package main

# The host namespaces a service may not share, by the compose key that asks for them.
host_namespace_rules := {"network_mode": "host_network", "pid": "host_pid", "ipc": "host_ipc"}

# Capabilities that amount to root on the host.
dangerous_capabilities := {"ALL", "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO", "NET_ADMIN", "DAC_READ_SEARCH", "BPF"}

# Host paths a bind mount may not expose: the host's root and system directories, and Docker's socket.
host_root_paths := {"/", "/etc", "/proc", "/sys", "/dev", "/boot", "/root", "/usr", "/bin", "/sbin", "/lib", "/var/lib/docker"}

docker_socket_paths := {"/var/run/docker.sock", "/run/docker.sock", "/var/run", "/run"}

# METADATA
# title: privileged
# description: >-
#   No privileged containers. Swarm drops `privileged`, but a compose file that asks for it says the service
#   expects to be root on the host; it must not reach the platform as if nothing were asked.
#   Exempt: deploy label io.sawmill.exception.privileged=<reason>.
deny_privileged contains d if {
	some svc in input.services
	some k in svc.dropped
	k.field == "privileged"
	not exempt(svc, "privileged")
	d := decision(svc, "privileged", "asks for privileged mode (Swarm drops the key; the platform forbids it)")
}

# METADATA
# title: host_network, host_pid, host_ipc
# description: >-
#   No host network, PID or IPC namespace (network_mode/pid/ipc: host; Swarm drops the keys).
#   Exempt: deploy label io.sawmill.exception.host_network (host_pid, host_ipc)=<reason>.
deny_host_network contains d if some d in host_namespace("network_mode")

# The same namespace through Swarm: a service attached to the network named host (an external network
# `name: host` in the compose file) shares the node's network as network_mode: host would.
deny_host_network contains d if {
	some svc in input.services
	some n in object.get(svc.spec, ["TaskTemplate", "Networks"], [])
	n.Target == "host"
	not exempt(svc, "host_network")
	d := decision(svc, "host_network", "joins the node's network (the Swarm network host)")
}

deny_host_pid contains d if some d in host_namespace("pid")

deny_host_ipc contains d if some d in host_namespace("ipc")

host_namespace(field) := {d |
	rule := host_namespace_rules[field]
	some svc in input.services
	some k in svc.dropped
	k.field == field
	k.value == "host"
	not exempt(svc, rule)
	d := decision(svc, rule, sprintf("asks for the host's namespace (%s: host; Swarm drops the key; the platform forbids it)", [field]))
}

# METADATA
# title: capabilities
# description: >-
#   No capability that amounts to root on the host (ALL, SYS_ADMIN, SYS_PTRACE, SYS_MODULE, SYS_RAWIO,
#   NET_ADMIN, DAC_READ_SEARCH, BPF); Swarm applies cap_add.
#   Exempt: deploy label io.sawmill.exception.capabilities=<reason>.
deny_capabilities contains d if {
	some svc in input.services
	some c in svc.capabilities.add
	upper(trim_prefix(upper(c), "CAP_")) in dangerous_capabilities
	not exempt(svc, "capabilities")
	d := decision(svc, "capabilities", sprintf("adds capability %s", [c]))
}

# METADATA
# title: docker_socket
# description: >-
#   No bind mount of the Docker socket (or the directory holding it): whoever reaches it controls the swarm.
#   Exempt (a Docker UI, say): deploy label io.sawmill.exception.docker_socket=<reason>.
deny_docker_socket contains d if {
	some svc in input.services
	some m in svc.mounts
	m.type == "bind"
	trim_suffix(m.source, "/") in docker_socket_paths
	not exempt(svc, "docker_socket")
	d := decision(svc, "docker_socket", sprintf("bind-mounts the Docker socket (%s)", [m.source]))
}

# METADATA
# title: host_root
# description: >-
#   No bind mount of the host's root or system directories (/, /etc, /proc, /sys, /dev, /boot, /root, /usr,
#   /bin, /sbin, /lib, /var/lib/docker).
#   Exempt: deploy label io.sawmill.exception.host_root=<reason>.
deny_host_root contains d if {
	some svc in input.services
	some m in svc.mounts
	m.type == "bind"
	host_root_path(m.source)
	not exempt(svc, "host_root")
	d := decision(svc, "host_root", sprintf("bind-mounts the host path %s", [m.source]))
}

host_root_path(p) if p in host_root_paths

host_root_path(p) if {
	p != "/"
	trim_suffix(p, "/") in host_root_paths
}

host_root_path(p) if {
	some root in host_root_paths
	root != "/"
	startswith(p, concat("", [root, "/"]))
}

# METADATA
# title: host_path
# description: >-
#   Bind mounts only of host paths the platform allows: the agent's allowed_host_paths (none by default), so
#   no other spelling of a path and no socket the lists above do not know gets through. The policies see
#   every bind source cleaned and absolute. Named volumes and tmpfs are unaffected.
#   Exempt: granted deploy label io.sawmill.exception.host_path=<reason>.
deny_host_path contains d if {
	not pre_release
	some svc in input.services
	some m in svc.mounts
	m.type == "bind"
	not host_path_allowed(m.source)
	not exempt(svc, "host_path")
	d := decision(svc, "host_path", sprintf("bind-mounts the host path %s, which the platform does not allow (the agent's allowed_host_paths: %v)", [m.source, object.get(input.config, "allowed_host_paths", [])]))
}

# METADATA
# title: host_path_allow_needed
# description: >-
#   The pipeline's check of the repository's files (pre_release) cannot know the agents' allowed_host_paths
#   (as it cannot know their grants): a bind mount is a warning there naming the setting the deploy will
#   need, and the agent denies it when it deploys unless its configuration allows the path.
warn_host_path_allow_needed contains d if {
	pre_release
	some svc in input.services
	some m in svc.mounts
	m.type == "bind"
	not host_path_allowed(m.source)
	not exempt(svc, "host_path")
	d := decision(svc, "host_path_allow_needed", sprintf("bind-mounts the host path %s: the agents that deploy it must allow it (allowed_host_paths: [%s] in their configuration)", [m.source, m.source]))
}

host_path_allowed(p) if {
	some allowed in input.config.allowed_host_paths
	path_under(p, allowed)
}

path_under(p, dir) if p == dir

path_under(p, dir) if startswith(p, concat("", [trim_suffix(dir, "/"), "/"]))

# METADATA
# title: dropped_key
# description: >-
#   Warn about every other compose key Swarm ignores (container_name, depends_on, devices, security_opt,
#   build, ...): the author expects something that will not happen.
#   Exempt: deploy label io.sawmill.exception.dropped_key=<reason>.
warn_dropped_key contains d if {
	some svc in input.services
	some k in svc.dropped
	not judged_elsewhere(k)
	not exempt(svc, "dropped_key")
	d := decision(svc, "dropped_key", sprintf("compose key %s is ignored by Swarm", [k.field]))
}

judged_elsewhere(k) if k.field == "privileged"

judged_elsewhere(k) if {
	host_namespace_rules[k.field]
	k.value == "host"
}
