#!/usr/bin/env python3
"""Rebuilds fuzz/seeds/TARGET/* from real inputs of the machine it runs on.

Run as root (it creates, and removes, a private tracefs instance):
    python3 fuzz/make_seeds.py
It records a few sched events and trace_marker writes on CPU 0, then builds
each target's seeds from that page, the instance's header_page and event
formats, and a cut of /sys/kernel/btf/vmlinux. Encodings: docs/PROTOCOL.md
(frames), the kernel's Documentation/bpf/btf.rst (BTF), and the input
layouts each fuzz_targets/*.rs file documents.
"""

import os
import struct
import subprocess
import sys

TRACEFS = "/sys/kernel/tracing"
SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
EVENTS = ["sched/sched_switch", "sched/sched_wakeup", "sched/sched_process_exec", "ftrace/print"]


def capture():
    """The pages of cpu0, header_page and the formats, from a private instance."""
    inst = f"{TRACEFS}/instances/fuzz-seeds-{os.getpid()}"
    os.mkdir(inst)
    try:
        write(f"{inst}/trace_clock", "x86-tsc")
        for e in EVENTS[:-1]:
            write(f"{inst}/events/{e}/enable", "1")
        for i in range(5):
            subprocess.run(
                ["taskset", "-c", "0", "sh", "-c", f"echo fuzz seed {i} > {inst}/trace_marker; /bin/true"],
                check=True,
            )
        write(f"{inst}/tracing_on", "0")
        fd = os.open(f"{inst}/per_cpu/cpu0/trace_pipe_raw", os.O_RDONLY | os.O_NONBLOCK)
        pages = []
        try:
            while page := os.read(fd, 4096):
                pages.append(page)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        header_page = read(f"{inst}/events/header_page")
        formats = {e: read(f"{inst}/events/{e}/format") for e in EVENTS}
        write(f"{inst}/events/enable", "0")
    finally:
        os.rmdir(inst)
    return pages, header_page, formats


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def records(page):
    """(common_type, payload) of each event record of a page (tracefs/page.rs)."""
    commit = struct.unpack_from("<Q", page, 8)[0] & ((1 << 27) - 1)
    data, pos, out = page[16 : 16 + commit], 0, []
    while pos + 4 <= len(data):
        type_len = struct.unpack_from("<I", data, pos)[0] & 0x1F
        if type_len == 0:
            length = struct.unpack_from("<I", data, pos + 4)[0] - 4
            payload, pos = data[pos + 8 : pos + 8 + length], pos + 8 + (length + 3) // 4 * 4
        elif type_len <= 28:
            payload, pos = data[pos + 4 : pos + 4 + type_len * 4], pos + 4 + type_len * 4
        elif type_len == 29:
            if struct.unpack_from("<I", data, pos)[0] >> 5 == 0:
                break
            pos += 4 + struct.unpack_from("<I", data, pos + 4)[0]
            continue
        else:
            pos += 8
            continue
        out.append((struct.unpack_from("<H", payload, 0)[0], payload))
    return out


def format_id(text):
    return int(next(l for l in text.splitlines() if l.startswith("ID:"))[3:])


def wstr(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def frame(kind, body):
    return struct.pack("<IHH", len(body), kind, 0) + body


def sample(cpu, before, ns, after):
    return struct.pack("<IIQQQ", cpu, 0, before, ns, after)


def hello(header_page, formats):
    body = b"TSCW" + struct.pack("<HH", 2, 0)
    body += wstr("seed-agent") + wstr("seed-guest") + wstr(os.uname().release) + wstr("x86-tsc")
    body += struct.pack("<I", 4096)
    body += struct.pack("<I", 2) + struct.pack("<II", 0, 0) + struct.pack("<II", 1, 2)
    body += wstr(header_page) + wstr("")
    body += struct.pack("<I", len(formats))
    for name, text in formats.items():
        system, event = name.split("/")
        body += wstr(system) + wstr(event) + struct.pack("<I", format_id(text)) + wstr(text)
    body += struct.pack("<I", 1) + sample(0, 1_000_000, 5_000, 1_000_040)
    return frame(1, body)


def page_frame(page, cpu=0):
    commit = struct.unpack_from("<Q", page, 8)[0] & ((1 << 27) - 1)
    return frame(4, struct.pack("<II", cpu, 1) + page[: 16 + commit])


def btf_cut(types_wanted=120):
    """The first types of the running kernel's BTF, with a string section
    holding only their names: a small blob that parses as the kernel's does."""
    data = open("/sys/kernel/btf/vmlinux", "rb").read()
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    types = data[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    new_strings, remap = bytearray(b"\0"), {0: 0}

    def name(off):
        if off not in remap:
            end = strings.index(b"\0", off)
            remap[off] = len(new_strings)
            new_strings.extend(strings[off : end + 1])
        return remap[off]

    out, pos = bytearray(), 0
    for _ in range(types_wanted):
        name_off, info, size = struct.unpack_from("<III", types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        out += struct.pack("<III", name(name_off), info, size)
        pos += 12
        extra = {1: 4, 14: 4, 17: 4, 3: 12, 4: 12 * vlen, 5: 12 * vlen, 15: 12 * vlen, 19: 12 * vlen, 6: 8 * vlen, 13: 8 * vlen}.get(kind, 0)
        words = list(struct.unpack_from(f"<{extra // 4}I", types, pos))
        # Members, enumerators and parameters start with a name offset.
        step = {4: 3, 5: 3, 19: 3, 6: 2, 13: 2}.get(kind)
        if step:
            for i in range(0, len(words), step):
                words[i] = name(words[i])
        out += struct.pack(f"<{len(words)}I", *words)
        pos += extra
    header = struct.pack("<HBBIIIII", magic, version, flags, 24, 0, len(out), len(out), len(new_strings))
    return header + bytes(out) + bytes(new_strings)


def save(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main():
    if os.geteuid() != 0:
        sys.exit("make_seeds.py: run as root (it creates a tracefs instance)")
    pages, header_page, formats = capture()
    page = pages[0]
    recs = [r for p in pages for r in records(p)]
    # page_decode: the first byte picks the page size (16 + 16 * byte).
    save("page_decode", "sched_page", b"\xff" + page)
    save("page_decode", "sched_page_cut", b"\xff" + page[:512])
    save("header_page", "x86_64", header_page)
    save("header_page", "x86_64_and_page", header_page.encode() + b"\0" + page[:1024])
    for name, text in formats.items():
        ours = [payload for (kind, payload) in recs if kind == format_id(text)]
        if ours:
            save("event_fields", name.split("/")[1], text.encode() + b"\0" + ours[0])
    hello_frame = hello(header_page, formats)
    save("hello_decode", "hello_only", hello_frame)
    save("hello_decode", "hello_and_page", hello_frame + page_frame(page))
    stream = hello_frame + page_frame(page[:512]) + frame(5, struct.pack("<IIQ", 0, 0, 7))
    stream += frame(6, sample(1, 2_000_000, 9_000, 2_000_050)) + frame(7, wstr("1 init\n42 seed\n"))
    stream += frame(8, wstr("done"))
    # frame_decode: the first byte picks the chunk size.
    save("frame_decode", "agent_stream", b"\x07" + stream)
    save("frame_decode", "hello_whole", b"\x3f" + hello_frame)
    # bind_signature: at_hello, slack, count, samples, then (offset, ratio, frac bits) per VM.
    offset = (1 << 64) - 5_000_000  # the guest runs 5M ticks behind the host
    at, slack = 10_000_000, 1_000_000
    bind = struct.pack("<QQB", at, slack, 2)
    for back in (400_000, 300_000):
        host = at - back
        guest = (host + offset) % (1 << 64)
        bind += struct.pack("<QQ", guest, guest + 40)
    bind += struct.pack("<QQB", offset, 1 << 48, 48)  # explains the samples
    bind += struct.pack("<QQB", 123_456_789, 1 << 48, 48)  # does not
    save("bind_signature", "one_vm_explains", bind)
    save("bind_signature", "scaled", struct.pack("<QQB", at, slack, 1) + struct.pack("<QQ", 5, 50) + struct.pack("<QQB", 7, 3 << 47, 48))
    save("btf_parse", "vmlinux_cut", btf_cut())


if __name__ == "__main__":
    main()
