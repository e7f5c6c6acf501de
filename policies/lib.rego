# The helpers every default rule uses. Package main is conftest's default namespace, so
# `conftest test --policy policies/ rendered.json` evaluates these rules as the agent does.
package main

# Rules no label can exempt: an image whose signature failed verification never runs.
never_exempt := {"image_signature"}

# exempt(svc, rule) holds when the service carries the deploy label io.sawmill.exception.<rule> with a
# non-empty reason, and the rule may be exempted.
exempt(svc, rule) if {
	trim_space(svc.exceptions[rule]) != ""
	not rule in never_exempt
}

# is_edge(svc): the service is the platform's edge proxy (deploy label io.sawmill.role=edge).
is_edge(svc) if svc.labels["io.sawmill.role"] == "edge"

# is_job(svc): a one-off job (replicated-job, global-job); it has no rolling update and no health to wait for.
is_job(svc) if svc.mode in {"replicated-job", "global-job"}

# decision(svc, rule, text) is a conftest message object: msg, plus the service and rule as metadata.
decision(svc, rule, text) := {
	"msg": sprintf("%s: %s", [svc.key, text]),
	"service": svc.key,
	"rule": rule,
}
