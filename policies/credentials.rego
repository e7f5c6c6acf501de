package main

# A variable name is a credential when its last word (split on _) is one of these...
credential_last_words := {"PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS"}

# ... or when any of its words is one of these.
credential_words := {"PASSWORD", "PASSWD", "SECRET"}

credential_name(name) if {
	words := split(upper(name), "_")
	words[count(words) - 1] in credential_last_words
}

credential_name(name) if {
	some w in split(upper(name), "_")
	w in credential_words
}

file_var(name) if endswith(upper(name), "_FILE")

# METADATA
# title: env_credentials
# description: >-
#   No credential in a plain environment variable (*PASSWORD*, *SECRET*, *_TOKEN, *_KEY, ... with a value):
#   env values show in `docker service inspect`, in logs and in crash dumps. Use a Swarm secret and point a
#   NAME_FILE variable at /run/secrets/<name>. The message names the variable, never its value.
#   Exempt: deploy label io.sawmill.exception.env_credentials=<reason>.
deny_env_credentials contains d if {
	some svc in input.services
	some e in svc.env
	credential_name(e.name)
	not file_var(e.name)
	e.value != ""
	not exempt(svc, "env_credentials")
	d := decision(svc, "env_credentials", sprintf("environment variable %s holds a literal credential; use a secret (%s_FILE=/run/secrets/...)", [e.name, e.name]))
}

# METADATA
# title: secret_file_path
# description: >-
#   A NAME_FILE credential variable points into /run/secrets/, where Swarm mounts secrets.
#   Exempt: deploy label io.sawmill.exception.secret_file_path=<reason>.
warn_secret_file_path contains d if {
	some svc in input.services
	some e in svc.env
	file_var(e.name)
	credential_name(trim_suffix(upper(e.name), "_FILE"))
	not startswith(e.value, "/run/secrets/")
	not exempt(svc, "secret_file_path")
	d := decision(svc, "secret_file_path", sprintf("%s does not point into /run/secrets/", [e.name]))
}
