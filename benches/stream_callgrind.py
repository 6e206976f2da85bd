"""Helpers of benches/stream_callgrind.sh.

body ACCOUNT JOB N   the gRPC request body of one StreamUsage call: N UsageReport frames
                     (GPU_SHARED on gpu.shared.a10, 100 ms each, seq 1..N), to stdout.
table FILE N         a callgrind profile's instructions per record, in total and grouped
                     by where they go (self cost of the code, by crate/module).
top FILE N K         the K functions of most self cost, per record.
callers FILE N RE    who calls the functions matching RE (through allocation wrappers).
"""

import re
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_str(tag, s):
    b = s.encode()
    return bytes([tag << 3 | 2]) + varint(len(b)) + b


def field_int(tag, n):
    return bytes([tag << 3]) + varint(n)


def body(account, job, n):
    out = sys.stdout.buffer
    for seq in range(1, n + 1):
        msg = (
            field_str(1, account)
            + field_str(2, job)
            + field_int(3, 1)
            + field_str(4, "gpu.shared.a10")
            + field_int(5, 100)
            + field_int(6, seq)
        )
        out.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)


# First match wins; matched against the function's name with a leading `<` or
# `core::ptr::drop_in_place<` taken off (so a type's impls and drops go with the type).
# Where the code of a cost line came from (its source file, inlining included) decides
# its group when that file belongs to a crate or a quotad module; code of the standard
# library and of unknown files goes with the function it runs in. First match wins.
FILE_GROUPS = [
    ("SQLite (embedded ledger's store)", r"sqlite3|rusqlite|/src/ledger/sqlite/"),
    ("ledger: rounds, burn-down, store rows", r"/src/ledger/"),
    ("sync loop (engine/sync.rs)", r"/src/engine/sync\.rs"),
    ("journal: encode, CRC, writer, tables, outbox", r"/src/journal/|/crc-[0-9]"),
    ("billing, rust_decimal", r"/src/billing/|rust_decimal"),
    ("engine: charge, rounds, decisions", r"/src/engine/"),
    ("prost decode/encode (+ generated pb)", r"/prost|tonic-prost|/out/quotad\.v1"),
    ("grpc: usage_stream, convert, quota", r"/src/grpc/"),
    ("logging, metrics, guard, auth", r"tracing|prometheus|/src/(metrics|logging\.rs|guard\.rs|auth|telemetry\.rs)"),
    ("h2, hyper, tonic, tower, http", r"/(h2|hyper|hyper-util|tonic|tower|tower-layer|tower-service|http|http-body|http-body-util|want|httparse)-[0-9]"),
    ("tokio runtime, channels, futures", r"/(tokio|tokio-stream|tokio-util|futures-[a-z]+|parking_lot[a-z_]*|crossbeam[a-z-]*)-[0-9]|nptl|futex"),
    ("hash maps, B-trees, hashing", r"/(hashbrown|dashmap|ahash|foldhash)-[0-9]|core/src/hash|collections/btree|std/src/collections|std/src/hash"),
    ("allocator (malloc/free)", r"/malloc/"),
    ("memcpy, memmove, memset, memcmp", r"mem(cpy|move|set|cmp)|/string/"),
]
# The same by the function's name (a leading `<` or `core::ptr::drop_in_place<` taken
# off, so a type's impls and drops go with the type).
NAME_GROUPS = [
    ("SQLite (embedded ledger's store)", r"sqlite3|rusqlite|quotad::ledger::sqlite"),
    ("ledger: rounds, burn-down, store rows", r"quotad::ledger"),
    ("sync loop (engine/sync.rs)", r"quotad::engine::sync"),
    ("journal: encode, CRC, writer, tables, outbox", r"quotad::journal|crc::"),
    ("billing, rust_decimal", r"quotad::billing|rust_decimal"),
    ("engine: charge, rounds, decisions", r"quotad::engine"),
    ("prost decode/encode (+ generated pb)", r"prost|tonic_prost|quotad::pb"),
    ("grpc: usage_stream, convert, quota", r"quotad::grpc"),
    ("logging, metrics, guard, auth", r"tracing|prometheus|quotad::(metrics|logging|guard|auth|telemetry)"),
    ("h2, hyper, tonic, tower, http", r"h2::|hyper|tonic|tower|http|want::"),
    ("tokio runtime, channels, futures", r"tokio|futures|parking_lot|std::sync|std::thread|pthread|__lll|futex|syscall"),
    ("hash maps, B-trees, hashing", r"hashbrown|dashmap|core::hash|std::hash|alloc::collections::btree|std::collections"),
    ("allocator (malloc/free)", r"(__libc_|_int_)?(malloc|free|realloc|calloc|cfree)|tcache|alloc::alloc|__rust_(alloc|dealloc|realloc)|alloc::raw_vec|malloc_consolidate|unlink_chunk"),
    ("memcpy, memmove, memset, memcmp", r"(__)?mem(cpy|move|set|cmp)|bcmp"),
    ("fmt, String, Vec, other std", r"core::|alloc::|std::"),
]
OTHER = "other (libc, kernel entry, ld.so)"


def group_of(fn, fl):
    for label, pattern in FILE_GROUPS:
        if re.search(pattern, fl):
            return label
    head = fn
    for prefix in ("core::ptr::drop_in_place<", "<"):
        if head.startswith(prefix):
            head = head[len(prefix):]
    for label, pattern in NAME_GROUPS:
        if re.match(pattern, head):
            return label
    for label, pattern in NAME_GROUPS:
        if re.search(pattern, fn):
            return label
    return OTHER


class Names:
    """Callgrind's name compression: "(12) name" defines id 12 for files ("f") or
    functions ("n"), "(12)" refers to it later."""

    DEFINE = re.compile(r"^\((\d+)\)(?: (.*))?$")

    def __init__(self):
        self.names = {"f": {}, "n": {}}

    def __call__(self, kind, v):
        m = self.DEFINE.match(v)
        if not m:
            return v
        if m.group(2) is not None:
            self.names[kind][m.group(1)] = m.group(2)
        return self.names[kind].get(m.group(1), "?")


def exclusive_costs(path):
    """Ir per (function, source file of the code), self cost only (calls' inclusive costs
    left out), from a callgrind file with one event (Ir)."""
    name = Names()

    costs = {}
    fl = fi = fn = "?"
    skip = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    k = (fn, fi)
                    costs[k] = costs.get(k, 0) + int(parts[1])
                continue
            key, _, v = line.partition("=")
            if key == "fl":
                fl = fi = name("f", v)
            elif key in ("fi", "fe"):
                fi = name("f", v)
            elif key in ("cfi", "cfl"):
                name("f", v)
            elif key == "fn":
                fn = name("n", v)
                fi = fl
            elif key == "cfn":
                name("n", v)
            elif key == "calls":
                skip = True
    return costs


def call_edges(path):
    """(caller, callee) -> [calls, inclusive Ir] from a callgrind file."""
    name = Names()

    edges = {}
    fn = cfn = "?"
    pending = None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if pending is not None:
                    parts = line.split()
                    e = edges.setdefault((fn, cfn), [0, 0])
                    e[0] += pending
                    e[1] += int(parts[1]) if len(parts) > 1 else 0
                    pending = None
                continue
            key, _, v = line.partition("=")
            if key in ("fl", "fi", "fe", "cfi", "cfl"):
                name("f", v)
            elif key == "fn":
                fn = name("n", v)
            elif key == "cfn":
                cfn = name("n", v)
            elif key == "calls":
                pending = int(v.split()[0])
    return edges


# Allocation wrappers a caller reaches malloc/free through: their calls are passed on to
# whoever called them, in proportion to the calls each made.
WRAPPERS = r"__rustc::__rd[la]|__rust_(alloc|dealloc|realloc)|alloc::raw_vec|alloc::alloc::|RawVecInner|finish_grow|do_reserve_and_handle|grow_one|grow_amortized|realloc$|^free$|^malloc$|_int_(malloc|free|realloc)|core::ptr::drop_in_place<alloc::(string|vec)"


def callers(path, n, target):
    """Who calls functions matching `target` (through allocation wrappers), per record."""
    edges = call_edges(path)
    into = {}
    for (a, b), (k, ir) in edges.items():
        into.setdefault(b, []).append((a, k, ir))
    out = {}

    def spread(fn, calls, ir, depth):
        ins = [(a, k, i) for a, k, i in into.get(fn, []) if a != fn]
        total = sum(k for _, k, _ in ins)
        for a, k, _ in ins:
            share = k / total if total else 0
            if depth < 6 and re.search(WRAPPERS, a):
                spread(a, calls * share, ir * share, depth + 1)
            else:
                o = out.setdefault(a, [0, 0])
                o[0] += calls * share
                o[1] += ir * share

    for fn in list(into):
        if re.search(target, fn):
            calls = sum(k for a, k, _ in into[fn] if a != fn)
            ir = sum(i for a, _, i in into[fn] if a != fn)
            spread(fn, calls, ir, 0)
    for a, (k, ir) in sorted(out.items(), key=lambda kv: -kv[1][1])[:40]:
        print(f"{k / n:7.2f} calls {ir / n:8.0f} Ir  {a[:140]}")


def table(path, n):
    sums = {}
    total = 0
    for (fn, fl), ir in exclusive_costs(path).items():
        g = group_of(fn, fl)
        sums[g] = sums.get(g, 0) + ir
        total += ir
    print(f"{'where':46} {'Ir/record':>10} {'share':>6}")
    for label, ir in sorted(sums.items(), key=lambda kv: -kv[1]):
        print(f"{label:46} {ir / n:10.0f} {100 * ir / total:5.1f}%")
    print(f"{'total':46} {total / n:10.0f}")


def top(path, n, k):
    """The k functions (with the file of their code) of most self cost, per record."""
    rows = sorted(exclusive_costs(path).items(), key=lambda kv: -kv[1])[:k]
    for (fn, fl), ir in rows:
        print(f"{ir / n:9.0f}  {group_of(fn, fl)[:20]:20}  {fn[:110]}  ({fl.split('/')[-1]})")


if __name__ == "__main__":
    if sys.argv[1] == "body":
        body(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "table":
        table(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "callers":
        callers(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "top":
        top(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
