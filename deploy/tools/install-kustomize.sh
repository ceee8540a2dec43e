#!/usr/bin/env bash
# Installs kustomize into <repo>/.guardstream/bin from the Go module proxy and prints its path.
# Idempotent: a binary of the pinned version already there is reused. The deploy tests look
# for kustomize there first, then on PATH.
#
# Building it needs Go. A Go >= 1.21 on PATH is used (it fetches the newer toolchain kustomize's
# go.mod asks for by itself); without one (fresh Debian; Debian 12's golang-go is 1.19) the Go
# toolchain is fetched as a module from the same proxy into <repo>/.guardstream/go. Needs curl
# and python3. Only the Kubernetes manifests' tests need kustomize; `make demo` never runs this.
#
#   deploy/tools/install-kustomize.sh            # pinned version
#   KUSTOMIZE_VERSION=v5.8.2 deploy/tools/install-kustomize.sh
set -euo pipefail

KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.2}"
# The toolchain fetched when no usable Go is installed: at least the go line of kustomize's go.mod.
GO_TOOLCHAIN_VERSION="${GO_TOOLCHAIN_VERSION:-1.26.0}"
GOPROXY_URL="${GOPROXY_URL:-https://proxy.golang.org}"
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
go_usable() {
  # Go >= 1.21 switches to the toolchain a module needs by itself (GOTOOLCHAIN=auto).
  command -v go >/dev/null 2>&1 || return 1
  local minor
  minor="$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  [[ -n "${minor}" && "${minor}" -ge 21 ]]
}

fetch_go() {
  local arch dir zip
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "install-kustomize: no Go toolchain download for $(uname -m); install Go >= 1.21 and rerun" >&2; exit 1 ;;
  esac
  dir="${repo_root}/.guardstream/go"
  if [[ ! -x "${dir}/bin/go" ]]; then
    zip="$(mktemp)"
    echo "install-kustomize: no Go >= 1.21 found; fetching Go ${GO_TOOLCHAIN_VERSION} into ${dir}" >&2
    curl -sSfL -o "${zip}" \
      "${GOPROXY_URL}/golang.org/toolchain/@v/v0.0.1-go${GO_TOOLCHAIN_VERSION}.linux-${arch}.zip"
    rm -rf "${dir}"
    # The module zip keeps the files' modes in its entries; unzip them with those modes.
    python3 - "${zip}" "${dir}" <<'PY'
import os, sys, zipfile
archive, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for info in z.infolist():
        # Entries are golang.org/toolchain@v0.0.1-goX.linux-ARCH/<path>.
        parts = info.filename.split("/", 2)
        name = parts[2] if len(parts) == 3 else ""
        if not name or name.endswith("/"):
            continue
        path = os.path.join(target, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as src, open(path, "wb") as dst:
            dst.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PY
    rm -f "${zip}"
  fi
  PATH="${dir}/bin:${PATH}"
  export GOROOT="${dir}"
}

if ! go_usable; then
  fetch_go
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
