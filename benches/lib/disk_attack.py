"""Runs INSIDE a sandbox: fills the scratch workspace one way until the
kernel refuses (or the cap given as argv[2] is reached) and says how much
it got onto the disk.

    python3 disk_attack.py dd|fallocate|files|deep [CAP_BYTES]

Prints `P <bytes>` as it goes (the last one survives a kill) and
`WRITTEN <bytes> <why it stopped>` at the end, where bytes are what the
filesystem allocated for it (st_blocks x 512), measured after an fsync.
Standard library only.
"""

import errno
import os
import sys

MODE = sys.argv[1]
CAP = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30
TOP = "/workspace/attack"
CHUNK = b"x" * (1 << 20)


def progress(n):
    print("P", n, flush=True)


def allocated(fd):
    return os.fstat(fd).st_blocks * 512


def dd():
    fd = os.open(TOP + "/big", os.O_WRONLY | os.O_CREAT, 0o600)
    written = 0
    why = "cap"
    while written < CAP:
        try:
            written += os.write(fd, CHUNK)
        except OSError as e:
            why = errno.errorcode.get(e.errno, str(e.errno))
            break
        progress(written)
    try:
        os.fsync(fd)
    except OSError:
        pass
    return allocated(fd), why


def fallocate():
    # First the request far beyond the limit, then 8 MiB ones on new files
    # until one is refused.
    total = 0
    why = "cap"
    fd = os.open(TOP + "/huge", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 20 << 30)
    except OSError as e:
        why = "20G:" + errno.errorcode.get(e.errno, str(e.errno))
    total += allocated(fd)
    os.close(fd)
    i = 0
    while total < CAP:
        fd = os.open(f"{TOP}/f{i}", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, 8 << 20)
        except OSError as e:
            why += " 8M:" + errno.errorcode.get(e.errno, str(e.errno))
            total += allocated(fd)
            os.close(fd)
            break
        total += allocated(fd)
        os.close(fd)
        progress(total)
        i += 1
    return total, why


def files():
    total = 0
    why = "cap"
    block = b"y" * 4096
    d = os.open(TOP, os.O_RDONLY | os.O_DIRECTORY)
    i = 0
    while total < CAP:
        try:
            fd = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=d)
        except OSError as e:
            why = "create:" + errno.errorcode.get(e.errno, str(e.errno))
            break
        try:
            os.write(fd, block)
            os.fsync(fd)
        except OSError as e:
            why = "write:" + errno.errorcode.get(e.errno, str(e.errno))
            total += allocated(fd)
            os.close(fd)
            break
        total += allocated(fd)
        os.close(fd)
        i += 1
        if i % 256 == 0:
            progress(total)
    return total, why


def deep():
    # One long-named directory per level, a 256 KiB file in each: the
    # paths soon pass PATH_MAX (4096), which a path-walking meter skips.
    total = 0
    why = "cap"
    block = b"z" * (256 << 10)
    name = "d" * 200
    cur = os.open(TOP, os.O_RDONLY | os.O_DIRECTORY)
    while total < CAP:
        try:
            fd = os.open("data", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=cur)
            os.write(fd, block)
            os.fsync(fd)
        except OSError as e:
            why = errno.errorcode.get(e.errno, str(e.errno))
            break
        total += allocated(fd)
        os.close(fd)
        try:
            os.mkdir(name, dir_fd=cur)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
        except OSError as e:
            why = "mkdir:" + errno.errorcode.get(e.errno, str(e.errno))
            break
        os.close(cur)
        cur = nxt
        progress(total)
    return total, why


os.makedirs(TOP, exist_ok=True)
n, why = {"dd": dd, "fallocate": fallocate, "files": files, "deep": deep}[MODE]()
os.sync()
print("WRITTEN", n, why, flush=True)
