#!/usr/bin/env bash
# Generates the committed gRPC stubs of the quotad package from proto/quotad/v1:
#
#   clients/python/tools/stubs.sh           regenerate src/quotad/v1/ (after a proto change)
#   clients/python/tools/stubs.sh --check   fail if the committed files differ from what the
#                                           proto generates (CI runs this)
#
# The generator (tools/protoc-requirements.txt) lives in a venv of its own under the cargo
# target directory, apart from the package's runtime versions, so that the output depends
# only on the proto and those pinned versions.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)" # clients/python
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
venv="$target/pyclient-protoc-venv"
requirements="$here/tools/protoc-requirements.txt"
package="$here/src/quotad/v1"
files=(quotad_pb2.py quotad_pb2.pyi quotad_pb2_grpc.py quotad_pb2_grpc.pyi)

check=false
case "${1:-}" in
"") ;;
--check) check=true ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

fail() {
    echo "stubs.sh: $*" >&2
    exit 1
}

# The generator venv, made again when the pinned versions change.
if ! cmp -s "$requirements" "$venv/protoc-requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv" || fail "cannot create a venv in $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" ||
        fail "pip install -r $requirements failed"
    cp "$requirements" "$venv/protoc-requirements.txt"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The mypy-protobuf plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) are found on PATH.
PATH="$venv/bin:$PATH" "$venv/bin/python" -m grpc_tools.protoc \
    -I "$repo/proto" \
    --python_out="$out" --grpc_python_out="$out" \
    --mypy_out=quiet:"$out" --mypy_grpc_out=quiet:"$out" \
    "$repo/proto/quotad/v1/quotad.proto" || fail "protoc failed on proto/quotad/v1/quotad.proto"

# The runtime floors in pyproject.toml must be what the generated code checks at import.
grpc_version="$(sed -n "s/^GRPC_GENERATED_VERSION = '\(.*\)'$/\1/p" "$out/quotad/v1/quotad_pb2_grpc.py")"
protobuf_version="$(sed -n 's/^# Protobuf Python Version: //p' "$out/quotad/v1/quotad_pb2.py")"
[ -n "$grpc_version" ] && [ -n "$protobuf_version" ] || fail "no version lines in the generated code"
for dep in "grpcio>=$grpc_version" "protobuf>=$protobuf_version"; do
    grep -q "\"$dep[,\"]" "$here/pyproject.toml" ||
        fail "pyproject.toml must require $dep: the generated code checks it at import"
done

if $check; then
    stale=0
    for f in "${files[@]}"; do
        if ! diff -u --label "committed $f" --label "generated $f" \
            "$package/$f" "$out/quotad/v1/$f" >"$out/diff" 2>&1; then
            head -n 40 "$out/diff" >&2
            stale=1
        fi
    done
    [ "$stale" = 0 ] || fail "src/quotad/v1/ does not match proto/quotad/v1: run clients/python/tools/stubs.sh and commit the result"
    echo "stubs.sh: src/quotad/v1/ matches proto/quotad/v1 (grpcio>=$grpc_version, protobuf>=$protobuf_version)"
else
    for f in "${files[@]}"; do
        cp "$out/quotad/v1/$f" "$package/$f"
    done
    echo "stubs.sh: wrote ${files[*]} to $package"
fi
