package main

# METADATA
# title: published_ports
# description: >-
#   Only the edge proxy (deploy label io.sawmill.role=edge) publishes ports. Every other service is reached
#   through it on the overlay network, so TLS, authentication and access logs live in one place.
#   Exempt: deploy label io.sawmill.exception.published_ports=<reason>.
deny_published_ports contains d if {
	some svc in input.services
	not is_edge(svc)
	some p in svc.ports
	not exempt(svc, "published_ports")
	d := decision(svc, "published_ports", sprintf(
		"publishes port %d but is not the edge proxy (deploy label io.sawmill.role=edge); route it through the edge proxy",
		[p.published],
	))
}

# METADATA
# title: edge_ports
# description: >-
#   The edge proxy publishes 80 and 443 only.
#   Exempt: deploy label io.sawmill.exception.edge_ports=<reason>.
deny_edge_ports contains d if {
	some svc in input.services
	is_edge(svc)
	some p in svc.ports
	not p.published in {80, 443}
	not exempt(svc, "edge_ports")
	d := decision(svc, "edge_ports", sprintf("the edge proxy publishes port %d; only 80 and 443 are allowed", [p.published]))
}
