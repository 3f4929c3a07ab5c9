#!/usr/bin/env python3
"""make depcheck: the include rules of DESIGN.md section 2, read from the
#include lines of every C file of every module."""
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODULES = ["common", "proto", "model", "compress", "secagg", "artifact", "net",
           "server", "client", "sim", "cli"]

# Which of our modules each module may include (itself always allowed).
ALLOWED = {
    "cli": set(MODULES),
    "sim": {"server", "client", "net", "model", "compress", "common"},
    "server": {"net", "proto", "secagg", "artifact", "compress", "model", "common"},
    "client": {"net", "proto", "secagg", "artifact", "compress", "model", "common"},
    # artifact/: signed model versions (manifest, SHA-256, Ed25519). Server
    # and client both need it and may not include each other.
    "artifact": {"common"},
    "net": {"proto", "common"},
    "secagg": {"proto", "common"},
    "proto": {"common"},
    "model": {"common"},
    "compress": {"common"},
    "common": set(),
}
# Narrower rules: net sees only the frame codec; secagg only message types.
ONLY = {
    ("net", "proto"): {"proto/frame.h"},
    ("secagg", "proto"): {"proto/flotilla.pb-c.h"},
}
# Outside libraries, by header prefix; a module may use those listed.
LIBS = {
    "uv": ("uv.h", "uv/"),
    "openssl": ("openssl/",),
    "sodium": ("sodium.h", "sodium/"),
    "protobuf-c": ("protobuf-c/",),
    "openblas": ("cblas.h", "openblas_config.h", "lapacke.h"),
    "inih": ("ini.h",),
    "jansson": ("jansson.h",),
}
LIB_ALLOWED = {
    "common": {"inih"},
    "proto": {"protobuf-c"},
    "model": {"openblas"},
    "compress": set(),
    "secagg": {"sodium", "openssl", "protobuf-c"},
    "artifact": {"sodium", "openssl", "jansson"},
    "net": {"uv", "openssl"},
    "server": {"uv", "openssl", "sodium", "jansson", "protobuf-c"},
    "client": {"uv", "openssl", "sodium", "jansson", "protobuf-c"},
    "sim": {"uv", "jansson", "sodium"},
    "cli": set(LIBS),
}
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def lib_of(header):
    for lib, prefixes in LIBS.items():
        for p in prefixes:
            if header == p or (p.endswith("/") and header.startswith(p)):
                return lib
    return None


def main():
    errors = []
    for mod in MODULES:
        d = os.path.join(ROOT, mod)
        if not os.path.isdir(d):
            continue
        for dirpath, _, files in os.walk(d):
            for name in sorted(files):
                if not name.endswith((".c", ".h")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        kind, header = m.groups()
                        where = f"{rel}:{lineno}: {mod} includes {header}"
                        if kind == '"':
                            target = header.split("/")[0]
                            if target not in MODULES:
                                errors.append(where + ": not a module path")
                                continue
                            if target == mod:
                                continue
                            if target not in ALLOWED[mod]:
                                errors.append(where + f": {mod} may not include {target}")
                            only = ONLY.get((mod, target))
                            if only and header not in only:
                                errors.append(where + f": {mod} may include only {sorted(only)} of {target}")
                        else:
                            lib = lib_of(header)
                            if lib and lib not in LIB_ALLOWED[mod]:
                                errors.append(where + f": {mod} may not use {lib}")
    for e in errors:
        print(e)
    if errors:
        print(f"depcheck: {len(errors)} violation(s)", file=sys.stderr)
        return 1
    print("depcheck: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
