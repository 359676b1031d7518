"""Decodes a Perfetto trace written by tsc-tracer with the official schema
(the PyPI `perfetto` package's perfetto_trace_pb2, installed by
`cargo xtask setup`) and checks it against the JSON-lines output of the same
events. Driven by tests/perfetto.rs.

    perfetto_check.py count TRACE
        prints {"packets": N}; fails if TRACE does not decode.
    perfetto_check.py check TRACE JSONL GUESTS
        JSONL: the JSON writer's lines, each with "boot_ns" added (the
        event's host TSC in CLOCK_BOOTTIME ns, as the Perfetto writer got it).
        GUESTS: JSON {vm_name: kernel_release}.
        Prints a JSON summary; exits non-zero with the first mismatch.
"""

import collections
import json
import sys

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

EXTRA = "tsc_tracer_extra"
FLAGS = "tsc_tracer_flags"
OF = "tsc_tracer_of"
TYPED = {
    "print": "ftrace:print",
    "sched_switch": "sched:sched_switch",
    "sched_wakeup": "sched:sched_wakeup",
    "sched_waking": "sched:sched_waking",
    "sched_wakeup_new": "sched:sched_wakeup_new",
    "sched_process_exit": "sched:sched_process_exit",
    "sched_process_free": "sched:sched_process_free",
    "task_newtask": "task:task_newtask",
    "task_rename": "task:task_rename",
}


def fail(why):
    print(f"perfetto_check: {why}", file=sys.stderr)
    sys.exit(1)


def load(path):
    with open(path, "rb") as f:
        return pb.Trace.FromString(f.read())


def generic_value(field):
    kind = field.WhichOneof("value")
    return None if kind is None else getattr(field, kind)


def machines(trace):
    """machine_id (None: host) -> SystemInfo; checks the first packet."""
    first = trace.packet[0]
    if not first.HasField("system_info") or first.HasField("machine_id"):
        fail(f"the first packet is not the host's SystemInfo: {first}")
    host = first.system_info
    if not host.utsname.release or not host.utsname.sysname or not host.machine_name:
        fail(f"host SystemInfo lacks utsname or machine_name: {host}")
    infos = {}
    for p in trace.packet:
        if p.HasField("system_info"):
            mid = p.machine_id if p.HasField("machine_id") else None
            if mid in infos:
                fail(f"two SystemInfo packets for machine {mid}")
            infos[mid] = p.system_info
    return infos


def events(trace, names):
    """Every event as (machine, cpu, ts, pid, name, fields, flags), the
    companions folded into the events they follow; counts of typed ones."""
    out, typed = [], collections.Counter()
    for p in trace.packet:
        if not p.HasField("ftrace_events"):
            continue
        mid = p.machine_id if p.HasField("machine_id") else None
        if mid not in names:
            fail(f"bundle of machine {mid}, which has no SystemInfo before it")
        bundle = p.ftrace_events
        if not bundle.HasField("cpu"):
            fail(f"a bundle without cpu: {p}")
        for e in bundle.event:
            if not e.HasField("timestamp") or not e.HasField("pid"):
                fail(f"an event without timestamp or pid: {e}")
            kind = e.WhichOneof("event")
            if kind == "generic" and e.generic.event_name == EXTRA:
                prev = out[-1] if out else None
                fields = {f.name: generic_value(f) for f in e.generic.field}
                if prev is None or (prev[2], prev[3]) != (e.timestamp, e.pid) or fields.pop(OF) != prev[4]:
                    fail(f"a companion that follows no event of its own: {e}")
                prev[6].extend(filter(None, fields.pop(FLAGS, "").split(",")))
                prev[5].update(fields)
                continue
            if kind == "generic":
                fields = {f.name: generic_value(f) for f in e.generic.field}
                flags = list(filter(None, fields.pop(FLAGS, "").split(",")))
                name = e.generic.event_name
            elif kind in TYPED:
                msg = getattr(e, kind)
                fields = {f.name: v for f, v in msg.ListFields()}
                flags, name = [], TYPED[kind]
                typed[name] += 1
            else:
                fail(f"an event of a kind this writer does not write: {kind}")
            out.append([names[mid], bundle.cpu, e.timestamp, e.pid, name, fields, flags])
    return out, typed


def normal(value):
    """A JSON field value as the Perfetto file has it."""
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)  # pointers are uint_value
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))  # arrays: their JSON text
    return value


def key(machine, cpu, ts, pid, name, fields, flags):
    fields = tuple(sorted((k, v) for k, v in fields.items() if v is not None))
    return (machine, cpu, ts, pid, name, fields, ",".join(flags))


def check(trace_path, jsonl_path, guests_json):
    trace = load(trace_path)
    guests = json.loads(guests_json)
    infos = machines(trace)
    names = {mid: ("host" if mid is None else i.machine_name) for mid, i in infos.items()}
    guest_names = sorted(n for mid, n in names.items() if mid is not None)
    if guest_names != sorted(guests):
        fail(f"guest machines {guest_names}, expected one per guest: {sorted(guests)}")
    for mid, info in infos.items():
        if mid is not None and info.utsname.release != guests[info.machine_name]:
            fail(f"machine {info.machine_name}: release {info.utsname.release!r}")
    got, typed = events(trace, names)
    want = []
    with open(jsonl_path) as f:
        for line in f:
            j = json.loads(line)
            name = j["event"]
            if name not in TYPED.values():
                name = name.split(":", 1)[1]
            fields = {k: normal(v) for k, v in j["fields"].items()}
            machine = "host" if j["source"] == "host" else j["vm"]
            want.append(key(machine, j["cpu"], j["boot_ns"], j["pid"], name, fields, j["flags"]))
            if j["event"] in TYPED.values() and typed[j["event"]] == 0:
                fail(f"{j['event']} is not typed")
    got = collections.Counter(key(*e) for e in got)
    want = collections.Counter(want)
    if got != want:
        missing = list((want - got).elements())[:3]
        extra = list((got - want).elements())[:3]
        fail(f"events differ: missing {missing}, extra {extra}")
    threads = []
    for p in trace.packet:
        if p.HasField("process_tree"):
            mid = p.machine_id if p.HasField("machine_id") else None
            for t in p.process_tree.threads:
                tgid = t.tgid if t.HasField("tgid") else None
                threads.append([names.get(mid), t.tid, tgid, t.name])
    print(json.dumps({
        "threads": threads,
        "events": sum(got.values()),
        "machines": {str(k): v for k, v in names.items()},
        "typed": dict(typed),
        "flagged": sum(1 for k in got.elements() if k[6]),
        "flags": collections.Counter(f for k in got.elements() for f in k[6].split(",") if f),
    }))


def main():
    if sys.argv[1:2] == ["count"] and len(sys.argv) == 3:
        print(json.dumps({"packets": len(load(sys.argv[2]).packet)}))
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 5:
        check(*sys.argv[2:])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
