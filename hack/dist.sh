#!/usr/bin/env bash
# Release assets (make dist; the assets:build job of pipelines/assets.yml on a tag): static linux/amd64 and
# linux/arm64 binaries of agent, sawmill-sops (the agent's SOPS helper, installed beside it as sawmill-sops)
# and pipegen, a CycloneDX SBOM of each (cyclonedx-gomod, from the binary's build information), SHA256SUMS
# over all of them, and the systemd unit. Out: dist/out/.
# VERSION (default: git describe) is stamped into the agent (agent version).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64}
CYCLONEDX=${CYCLONEDX:-go run github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0}
out=dist/out
rm -rf "$out" && mkdir -p "$out"
for p in $PLATFORMS; do
	os=${p%/*} arch=${p#*/}
	for cmd in agent sawmill-sops pipegen; do
		bin="$out/$cmd-$os-$arch"
		CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$bin" "./cmd/$cmd"
		if [ "${SBOM:-true}" = true ]; then
			$CYCLONEDX bin -json -output "$bin.cdx.json" -version "$VERSION" "$bin"
		fi
	done
done
cp dist/sawmill-agent.service "$out/"
(cd "$out" && sha256sum -- * > SHA256SUMS)
echo "dist: $(ls "$out" | wc -l) files in $out ($VERSION)"
