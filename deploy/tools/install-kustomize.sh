#!/usr/bin/env bash
# Installs kustomize into <repo>/.guardstream/bin from the Go module proxy and prints its path.
# Idempotent: a binary of the pinned version already there is reused. The deploy tests look
# for kustomize there first, then on PATH.
#
#   deploy/tools/install-kustomize.sh            # pinned version
#   KUSTOMIZE_VERSION=v5.8.2 deploy/tools/install-kustomize.sh
set -euo pipefail

KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.2}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin_dir="${repo_root}/.guardstream/bin"
binary="${bin_dir}/kustomize"

installed_version() {
  # `kustomize version` prints e.g. "v5.8.3"; older releases print a longer line containing it.
  "${binary}" version 2>/dev/null | grep -o 'v[0-9][0-9.]*' | head -n 1 || true
}

if [[ -x "${binary}" && "$(installed_version)" == "${KUSTOMIZE_VERSION}" ]]; then
  echo "${binary}"
  exit 0
fi

# Go's own installer puts it in /usr/local/go/bin, which a non-login shell may lack on PATH.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:${PATH}"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-kustomize: 'go' is not on PATH; install Go >= 1.22 (https://go.dev/doc/install) and rerun" >&2
  exit 1
fi

mkdir -p "${bin_dir}"
# Progress to stderr so that stdout is only the path (callers capture it).
echo "install-kustomize: building sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION} into ${bin_dir}" >&2
GOBIN="${bin_dir}" GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
  go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" >&2

if [[ "$(installed_version)" != "${KUSTOMIZE_VERSION}" ]]; then
  echo "install-kustomize: ${binary} does not report version ${KUSTOMIZE_VERSION}" >&2
  exit 1
fi
echo "${binary}"
