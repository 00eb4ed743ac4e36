#!/usr/bin/env python3
"""Generates the small C project that the workload benchmark builds.

A build is a good stand-in for what coding agents run in a sandbox: make
forks gcc, which forks cc1 and as, per file, then ld; every step opens
many headers and libraries, writes objects and temporary files, so the
build exercises exactly the paths a sandbox can slow down (exec, file
lookups through the mount tree, seccomp and Landlock checks).

Each unit has a few functions with loops, a struct sort and a switch, so
-O2 gives the compiler real work (tens of milliseconds per file) without
any dependency beyond libc. `make clean` removes every build output.

Usage: cproject.py DIR [--units N]
"""

import argparse
import os

UNIT = """\
#include <stdint.h>
#include <string.h>
#include "common.h"

static uint64_t mix_{n}(uint64_t x) {{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x + {n}u;
}}

struct rec_{n} {{ uint32_t id; char name[24]; double score; }};

static int cmp_{n}(const struct rec_{n} *a, const struct rec_{n} *b) {{
    if (a->score != b->score) return a->score < b->score ? -1 : 1;
    return strcmp(a->name, b->name);
}}

static void sort_{n}(struct rec_{n} *r, int len) {{
    for (int i = 1; i < len; i++) {{
        struct rec_{n} key = r[i];
        int j = i - 1;
        while (j >= 0 && cmp_{n}(&r[j], &key) > 0) {{ r[j + 1] = r[j]; j--; }}
        r[j + 1] = key;
    }}
}}

uint64_t work_{n}(int rounds) {{
    struct rec_{n} r[64];
    uint64_t h = {n}u;
    for (int i = 0; i < 64; i++) {{
        h = mix_{n}(h + (uint64_t)i);
        r[i].id = (uint32_t)h;
        r[i].score = (double)(h % 1000) / 7.0;
        for (int k = 0; k < 23; k++) r[i].name[k] = (char)('a' + (h >> k) % 26);
        r[i].name[23] = 0;
    }}
    sort_{n}(r, 64);
    for (int i = 0; i < rounds; i++) h = mix_{n}(h ^ r[i % 64].id) + common_step(h, i);
    switch (h % 8) {{
    case 0: return h * 3;
    case 1: return h ^ 0x55;
    case 2: return h + r[0].id;
    case 3: return h - r[63].id;
    case 4: return h << 1;
    case 5: return h >> 1;
    case 6: return ~h;
    default: return h;
    }}
}}
"""

COMMON_H = """\
#include <stdint.h>
static inline uint64_t common_step(uint64_t h, int i) { return (h << 7) ^ (uint64_t)i; }
"""

# Recipe lines must start with a tab.
MAKEFILE = """\
# gcc, not cc: cc is a symlink through /etc/alternatives, and the bwrap
# sandbox has no /etc.
CC = gcc
CFLAGS = -O2 -pipe -Wall
SRCS = $(wildcard *.c)
OBJS = $(SRCS:.c=.o)

app: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $(OBJS)

%.o: %.c common.h
\t$(CC) $(CFLAGS) -c -o $@ $<

clean:
\trm -f $(OBJS) app

.PHONY: clean
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--units", type=int, default=40)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)

    def write(name, text):
        with open(os.path.join(a.dir, name), "w") as f:
            f.write(text)

    for n in range(1, a.units + 1):
        write(f"unit{n:02d}.c", UNIT.format(n=n))
    decls = "".join(f"uint64_t work_{n}(int);\n" for n in range(1, a.units + 1))
    calls = "".join(f"    h ^= work_{n}(1000);\n" for n in range(1, a.units + 1))
    write("main.c", "#include <stdio.h>\n#include <stdint.h>\n" + decls +
          "int main(void) {\n    uint64_t h = 0;\n" + calls +
          '    printf("%llu\\n", (unsigned long long)h);\n    return 0;\n}\n')
    write("common.h", COMMON_H)
    write("Makefile", MAKEFILE)


if __name__ == "__main__":
    main()
