package main

# METADATA
# title: image_digest
# description: >-
#   Every image is pinned by digest (repo:tag@sha256:...): what was scanned and signed is what runs, and the
#   manager cannot re-resolve a moved tag. Releases pin images; a hand-written compose file usually does not.
#   Exempt: deploy label io.sawmill.exception.image_digest=<reason>.
deny_image_digest contains d if {
	some svc in input.services
	not svc.image.pinned
	not pinned_by_release(svc)
	not exempt(svc, "image_digest")
	d := decision(svc, "image_digest", sprintf("image %s is not pinned by digest (repo:tag@sha256:...)", [svc.image.ref]))
}

# METADATA
# title: image_signature
# description: >-
#   An image whose signature failed verification never runs; in production (the tier the platform
#   configured, input.config.tier) an image whose signature could not be checked does not run either. No exemption.
deny_image_signature contains d if {
	some svc in input.services
	svc.image.signature.status == "unverified"
	d := decision(svc, "image_signature", sprintf("the signature of image %s failed verification", [svc.image.ref]))
}

deny_image_signature contains d if {
	production
	not pre_release
	some svc in input.services
	svc.image.signature.status == "unknown"
	d := decision(svc, "image_signature", sprintf("the signature of image %s was not verified (production needs a verified signature)", [svc.image.ref]))
}

# METADATA
# title: signature_at_deploy
# description: >-
#   The pipeline's check of the repository's files (agent check --pre-release REGISTRY) runs before the images
#   are signed: the repository's images are pinned by the release, and every signature is verified by the
#   agent when it deploys. A reminder, not a waiver: the agent refuses an unverified image in production.
warn_signature_at_deploy contains d if {
	production
	pre_release
	some svc in input.services
	svc.image.signature.status == "unknown"
	d := decision(svc, "signature_at_deploy", sprintf("the signature of image %s is verified when the agent deploys the release", [svc.image.ref]))
}

# pre_release: the check runs on the repository's files in the pipeline, before the release pins and signs.
pre_release if input.config.pre_release != ""

# pinned_by_release: a repository image (under the release registry), which the release pins to the digest
# the pipeline built and signed.
pinned_by_release(svc) if {
	pre_release
	startswith(svc.image.ref, concat("", [input.config.pre_release, "/"]))
}

# METADATA
# title: signature_unknown
# description: >-
#   Outside production, an image whose signature was not checked (no registry reached, say) is a warning.
#   Exempt: deploy label io.sawmill.exception.signature_unknown=<reason>.
warn_signature_unknown contains d if {
	not production
	some svc in input.services
	svc.image.signature.status == "unknown"
	not exempt(svc, "signature_unknown")
	d := decision(svc, "signature_unknown", sprintf("the signature of image %s was not verified", [svc.image.ref]))
}

# METADATA
# title: image_registry
# description: >-
#   Images come from the allowed registries (input.config.allowed_registries: a host, or a host/path prefix).
#   Exempt: deploy label io.sawmill.exception.image_registry=<reason>.
deny_image_registry contains d if {
	count(input.config.allowed_registries) > 0
	some svc in input.services
	not allowed_registry(svc.image)
	not exempt(svc, "image_registry")
	d := decision(svc, "image_registry", sprintf("image %s is not from an allowed registry (%s)", [svc.image.ref, concat(", ", input.config.allowed_registries)]))
}

allowed_registry(img) if img.registry in input.config.allowed_registries

allowed_registry(img) if {
	some prefix in input.config.allowed_registries
	startswith(sprintf("%s/%s", [img.registry, img.repository]), sprintf("%s/", [trim_suffix(prefix, "/")]))
}

# METADATA
# title: registry_unchecked
# description: >-
#   With no allowed registries configured, the registry rule cannot judge anything: say so once.
warn_registry_unchecked contains d if {
	count(input.config.allowed_registries) == 0
	count(input.services) > 0
	d := {"msg": "no allowed registries configured: image registries are not checked", "rule": "registry_unchecked"}
}
