# The helpers every default rule uses. Package main is conftest's default namespace, so
# `conftest test --policy policies/ rendered.json` evaluates these rules as the agent does.
package main

# Rules no label can exempt: an image whose signature failed verification never runs, and an exception the
# platform did not grant stays refused.
never_exempt := {"image_signature", "exception_not_granted"}

# production: the environment's tier, as the platform configured it (input.config.tier); never its name.
production if input.config.tier == "production"

# requested(svc, rule): the service's deploy label io.sawmill.exception.<rule> asks for an exception, with a
# reason. A release only asks: see granted.
requested(svc, rule) if {
	trim_space(svc.exceptions[rule]) != ""
	not rule in never_exempt
}

# granted(svc, rule): the platform grants the rule (or the role "edge") to the service: the agent's
# configuration (grants:, filtered by the agent for this stack and environment) or the platform's own policy
# directory (a rule `grants contains {"rule": ..., "service": ...}` in package main).
granted(svc, rule) if {
	some g in input.config.grants
	g.rule == rule
	g.service in {svc.key, "*"}
}

granted(svc, rule) if {
	some g in data.main.grants
	g.rule == rule
	g.service in {svc.key, "*"}
}

# exempt(svc, rule): the service asks for the exception and the platform grants it. The pipeline's check of
# the repository's files (pre_release) cannot know the agent's grants: there a request counts, and a warning
# names the grant the deploy will need.
exempt(svc, rule) if {
	requested(svc, rule)
	granted(svc, rule)
}

exempt(svc, rule) if {
	requested(svc, rule)
	pre_release
}

# claims_edge(svc): the service calls itself the edge proxy (deploy label io.sawmill.role=edge).
claims_edge(svc) if svc.labels["io.sawmill.role"] == "edge"

# is_edge(svc): the service is the platform's edge proxy: it claims the role and the platform grants it.
is_edge(svc) if {
	claims_edge(svc)
	granted(svc, "edge")
}

is_edge(svc) if {
	claims_edge(svc)
	pre_release
}

# is_job(svc): a one-off job (replicated-job, global-job); it has no rolling update and no health to wait for.
is_job(svc) if svc.mode in {"replicated-job", "global-job"}

# decision(svc, rule, text) is a conftest message object: msg, plus the service and rule as metadata.
decision(svc, rule, text) := {
	"msg": sprintf("%s: %s", [svc.key, text]),
	"service": svc.key,
	"rule": rule,
}
