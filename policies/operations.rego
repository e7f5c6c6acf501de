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
	trim_space(reason) != ""
	not rule in never_exempt
	d := decision(svc, "exception", sprintf("exception for rule %s: %s", [rule, reason]))
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
