package main

# Docker's healthcheck defaults, used when the spec leaves a value at 0.
default_health_interval_seconds := 30

default_health_retries := 3

# METADATA
# title: resource_limits
# description: >-
#   Every service sets a memory and a CPU limit: one runaway container must not starve the node, and with it
#   every other service scheduled there.
#   Exempt: deploy label io.sawmill.exception.resource_limits=<reason>.
deny_resource_limits contains d if {
	some svc in input.services
	svc.resources.limit_memory_bytes == 0
	not exempt(svc, "resource_limits")
	d := decision(svc, "resource_limits", "sets no memory limit (deploy.resources.limits.memory)")
}

deny_resource_limits contains d if {
	some svc in input.services
	svc.resources.limit_cpus == 0
	not exempt(svc, "resource_limits")
	d := decision(svc, "resource_limits", "sets no CPU limit (deploy.resources.limits.cpus)")
}

# METADATA
# title: healthcheck
# description: >-
#   Every long-running service has a healthcheck in the compose file: the agent's convergence check and
#   Swarm's update monitor can only tell a broken version from a good one by it. Jobs are not judged. A
#   HEALTHCHECK in the image is not visible in the spec: repeat it in the compose file or exempt.
#   Exempt: deploy label io.sawmill.exception.healthcheck=<reason>.
deny_healthcheck contains d if {
	some svc in input.services
	not is_job(svc)
	not has_healthcheck(svc)
	not exempt(svc, "healthcheck")
	d := decision(svc, "healthcheck", "has no healthcheck")
}

has_healthcheck(svc) if {
	svc.healthcheck != null
	not svc.healthcheck.disabled
}

# METADATA
# title: restart_policy
# description: >-
#   A service states its restart policy (deploy.restart_policy): Swarm's default restarts a crashing task
#   forever without a delay.
#   Exempt: deploy label io.sawmill.exception.restart_policy=<reason>.
warn_restart_policy contains d if {
	some svc in input.services
	not is_job(svc)
	svc.restart_policy == null
	not exempt(svc, "restart_policy")
	d := decision(svc, "restart_policy", "sets no restart policy (deploy.restart_policy)")
}

# METADATA
# title: update_rollback
# description: >-
#   A failed update rolls back (deploy.update_config.failure_action: rollback). Swarm's default, pause,
#   leaves a half-updated service behind.
#   Exempt: deploy label io.sawmill.exception.update_rollback=<reason>.
deny_update_rollback contains d if {
	some svc in input.services
	not is_job(svc)
	svc.update_config == null
	not exempt(svc, "update_rollback")
	d := decision(svc, "update_rollback", "has no update_config; set deploy.update_config.failure_action: rollback")
}

deny_update_rollback contains d if {
	some svc in input.services
	not is_job(svc)
	svc.update_config.failure_action != "rollback"
	not exempt(svc, "update_rollback")
	action := object.get(svc.update_config, "failure_action", "")
	d := decision(svc, "update_rollback", sprintf("update_config.failure_action is %q (empty means pause); use rollback", [action]))
}

# METADATA
# title: update_monitor
# description: >-
#   The update monitor window covers the healthcheck: Swarm counts a task as failed during an update only
#   within `monitor`, and Docker marks a task unhealthy only after start_period + interval x retries. A
#   shorter window lets a broken version through and the rollback never starts.
#   Exempt: deploy label io.sawmill.exception.update_monitor=<reason>.
deny_update_monitor contains d if {
	some svc in input.services
	not is_job(svc)
	has_healthcheck(svc)
	svc.update_config != null
	window := health_window(svc.healthcheck)
	svc.update_config.monitor_seconds < window
	not exempt(svc, "update_monitor")
	d := decision(svc, "update_monitor", sprintf(
		"update_config.monitor is %vs, shorter than the healthcheck needs to fail a task (start_period + interval x retries = %vs)",
		[svc.update_config.monitor_seconds, window],
	))
}

health_window(h) := h.start_period_seconds + (interval * retries) if {
	interval := health_value(h.interval_seconds, default_health_interval_seconds)
	retries := health_value(h.retries, default_health_retries)
}

health_value(v, _) := v if v > 0

health_value(v, fallback) := fallback if v <= 0

# METADATA
# title: exception
# description: >-
#   Every exception in use is reported, with its reason, so it shows in every check and every deploy log. An
#   exception without a reason, or for a rule that cannot be exempted, is reported and has no effect.
warn_exception contains d if {
	some svc in input.services
	some rule, reason in svc.exceptions
	exempt(svc, rule)
	d := decision(svc, "exception", sprintf("exception for rule %s: %s", [rule, reason]))
}

# METADATA
# title: exception_not_granted
# description: >-
#   A release may ask for an exception (io.sawmill.exception.<rule>) or the edge role (io.sawmill.role: edge);
#   only the platform grants them (the agent's configuration, grants:). A request the platform did not grant
#   is refused, naming the grant needed. In the pipeline's check (pre-release) it is a warning instead: the
#   agent's grants are not known there, and the agent refuses it when it deploys.
deny_exception_not_granted contains d if {
	not pre_release
	some d in ungranted
}

warn_exception_grant_needed contains d if {
	pre_release
	some u in ungranted
	d := object.union(u, {"rule": "exception_grant_needed"})
}

ungranted contains d if {
	some svc in input.services
	some rule, _ in svc.exceptions
	requested(svc, rule)
	not granted(svc, rule)
	d := decision(svc, "exception_not_granted", sprintf("asks for an exception from rule %s, which the platform does not grant it (an operator grants it in the agent's configuration: grants: [{rule: %s, stack: %s, service: %s}])", [rule, rule, input.stack, svc.key]))
}

ungranted contains d if {
	some svc in input.services
	claims_edge(svc)
	not granted(svc, "edge")
	d := decision(svc, "exception_not_granted", sprintf("calls itself the edge proxy (io.sawmill.role: edge), a role the platform does not grant it (an operator grants it in the agent's configuration: grants: [{rule: edge, stack: %s, service: %s}])", [input.stack, svc.key]))
}

warn_exception contains d if {
	some svc in input.services
	some rule, reason in svc.exceptions
	trim_space(reason) == ""
	d := decision(svc, "exception", sprintf("exception label for rule %s has no reason and is ignored", [rule]))
}

warn_exception contains d if {
	some svc in input.services
	some rule, reason in svc.exceptions
	trim_space(reason) != ""
	rule in never_exempt
	d := decision(svc, "exception", sprintf("rule %s cannot be exempted; the label is ignored", [rule]))
}
