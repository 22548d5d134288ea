#!/usr/bin/env bash
# Runs buf on the gRPC contracts under proto/ (config: buf.yaml at the repo root).
#
#   scripts/buf.sh                                  # buf lint
#   scripts/buf.sh lint
#   scripts/buf.sh breaking --against '.git#branch=main'
#   scripts/buf.sh format -d
#
# Uses `buf` from PATH when there is one (or $BUF, a path to a buf binary). Otherwise it
# installs the npm package @bufbuild/buf (pinned below) into .local/buf under the repo root
# (git-ignored) and uses the binary it ships. Always runs from the repo root, whatever the
# current directory.
set -euo pipefail

BUF_NPM_VERSION="${BUF_NPM_VERSION:-1.75.0}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.local/buf"

# Prints the path of the buf binary installed under $prefix, if any.
local_buf() {
  local os arch candidate
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) os="" ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch="" ;;
  esac
  for candidate in \
    "$prefix/node_modules/@bufbuild/buf-$os-$arch/bin/buf" \
    "$prefix/node_modules/.bin/buf"; do
    if [[ -x "$candidate" ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

find_buf() {
  if [[ -n "${BUF:-}" ]]; then
    printf '%s\n' "$BUF"
  elif command -v buf >/dev/null 2>&1; then
    command -v buf
  elif local_buf; then
    :
  else
    if ! command -v npm >/dev/null 2>&1; then
      echo "buf.sh: buf is not on PATH and npm is not available to install it" >&2
      return 1
    fi
    echo "buf.sh: installing @bufbuild/buf@$BUF_NPM_VERSION into $prefix" >&2
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --no-save --include=optional \
      --loglevel=error "@bufbuild/buf@$BUF_NPM_VERSION" >&2
    if ! local_buf; then
      echo "buf.sh: npm install finished but no buf binary was found under $prefix" >&2
      return 1
    fi
  fi
}

buf="$(find_buf)"
cd "$root"
if [[ $# -eq 0 ]]; then
  set -- lint
fi
exec "$buf" "$@"
