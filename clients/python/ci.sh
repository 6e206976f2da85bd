#!/usr/bin/env bash
# CI for the Python client (run by .ci/run; runs on its own too): installs the package as a
# user would (pip install ./clients/python) with its dev tools in a venv under the cargo
# target directory, checks the generated stubs against proto/, then ruff, mypy --strict
# and pytest against a real quotad built from this repository.
#
# The tests run once more under the oldest Python the package supports (3.9) when the
# machine has one (pyenv's, or the interpreter named by QUOTAD_PY_OLDEST).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)" # clients/python
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac

step() { printf -- '-- %s\n' "$*"; }
fail() {
    echo "clients/python/ci.sh: FAILED: $*" >&2
    exit 1
}
pip_quiet=(--quiet --disable-pip-version-check)

# venv DIR PYTHON PACKAGE: a venv with PACKAGE (the package with extras, or with pytest)
# installed, the package's code taken fresh from the source tree.
venv() {
    local dir="$1" python="$2"
    shift 2
    if [ ! -x "$dir/bin/python" ]; then
        "$python" -m venv "$dir" || fail "cannot create a venv in $dir with $python"
    fi
    "$dir/bin/pip" install "${pip_quiet[@]}" "$@" || fail "pip install $* failed"
    # The same version number again: make pip take this tree's code, not its cached build.
    "$dir/bin/pip" install "${pip_quiet[@]}" --force-reinstall --no-deps "$here" ||
        fail "pip install $here failed"
}

step "python: build quotad for the tests"
cargo build --locked --bin quotad || fail "cargo build failed"
export QUOTAD_BIN="$target/debug/quotad"

step "python: generated stubs match proto/quotad/v1"
"$here/tools/stubs.sh" --check

step "python: venv ($target/pyclient-venv)"
command -v python3 >/dev/null || fail "python3 is not installed"
py="$target/pyclient-venv/bin"
venv "$target/pyclient-venv" python3 "$here[dev]"
"$py/python" --version

cd "$here"
step "python: ruff"
"$py/ruff" check .
"$py/ruff" format --check .

step "python: mypy --strict"
"$py/mypy"

step "python: pytest"
"$py/pytest" -q

oldest="${QUOTAD_PY_OLDEST:-}"
if [ -z "$oldest" ]; then
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9.*/bin/python3.9; do
        [ -x "$candidate" ] && oldest="$candidate"
    done
fi
if [ -n "$oldest" ] && [ -x "$oldest" ]; then
    step "python: pytest on $("$oldest" --version)"
    # The dev tools need a newer Python; the tests need only pytest.
    venv "$target/pyclient-venv-oldest" "$oldest" "$here" pytest
    "$target/pyclient-venv-oldest/bin/pytest" -q -p no:cacheprovider
else
    step "python: no Python 3.9 on this machine; tests ran on $("$py/python" --version) only"
fi
step "python: all passed"
