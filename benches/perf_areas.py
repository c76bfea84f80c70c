#!/usr/bin/env python3
"""Sums `perf script -F comm,tid,ip,sym,dso` samples (with call chains) by area
of the relay: which part of smarthost each on-CPU sample was working for, and
within it how much was in the kernel and in which syscall.

    perf script -i perf.data -F comm,tid,ip,sym,dso > perf.script
    benches/perf_areas.py perf.script
"""
import collections
import re
import sys

# First match wins, tested against the whole chain (leaf to root).
AREAS = [
    ("logging", re.compile(r"tracing_subscriber::fmt|smarthost::logging|tracing_core::event::Event::dispatch|tracing_core::dispatcher::Dispatch::event")),
    ("tls", re.compile(r"rustls|\bring::|ring_core")),
    ("spool: store before the 250", re.compile(r"smarthost::spool::(Incoming|SpoolInner::commit|write_synced|DirSync|TmpFile)")),
    ("spool: delivery's read and remove", re.compile(r"smarthost::spool::")),
    ("delivery (queue, outbound SMTP)", re.compile(r"smarthost::queue::|smarthost::outbound::")),
    ("session: command parsing", re.compile(r"smarthost::session::command::|smtp_proto::request")),
    ("session: DATA content (dot, body)", re.compile(r"smarthost::dot::|smarthost::body::|ingest_content")),
    ("session: other (socket I/O, replies, state)", re.compile(r"smarthost::session::")),
    ("accept loop", re.compile(r"smarthost::listener::")),
    ("tokio runtime (scheduling, parking, blocking pool)", re.compile(r"tokio::runtime|tokio::|std::thread")),
]


def samples(path):
    frames = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("\t") or line.startswith(" " * 8):
                frames.append(line.strip())
            elif line.strip():
                if frames:
                    yield frames
                frames = []
        if frames:
            yield frames


def syscall(frames):
    """The syscall a kernel sample is in, from its chain (leaf first)."""
    for fr in frames:
        m = re.search(r"__(?:x64|se|do)_sys_(\w+)", fr)
        if m:
            return m.group(1)
    # Newer kernels inline the __x64_sys_ wrappers: take the frame that
    # do_syscall_64 called (do_writev, ksys_write, exit_to_user_mode_loop).
    names = [fr.split()[1] if len(fr.split()) > 1 else "" for fr in frames]
    if "do_syscall_64" in names:
        i = names.index("do_syscall_64")
        callee = names[i - 1] if i > 0 else ""
        if callee == "exit_to_user_mode_loop":
            return "(rescheduled on syscall exit)"
        return re.sub(r"^(ksys_|do_|__)", "", callee) or None
    for fr in frames:
        if "kallsyms" not in fr:
            return None
    return "(no syscall: irq/softirq/scheduler)"


def main():
    areas = collections.Counter()
    kernel = collections.Counter()
    calls = collections.defaultdict(collections.Counter)
    total = 0
    for frames in samples(sys.argv[1]):
        total += 1
        chain = "\n".join(frames)
        area = "kernel only (no user stack: irq, softirq, idle switch)"
        if any("kallsyms" not in fr and "[unknown]" not in fr for fr in frames):
            area = "other user code"
            for name, rx in AREAS:
                if rx.search(chain):
                    area = name
                    break
        areas[area] += 1
        if "kallsyms" in frames[0]:
            kernel[area] += 1
            calls[area][syscall(frames) or "(kernel, no syscall frame)"] += 1
    print(f"{total} samples")
    print("| area | share of relay CPU | of which in the kernel | top syscalls (share of the area) |")
    print("|---|---|---|---|")
    for area, n in areas.most_common():
        top = ", ".join(
            f"{c} {100 * k / n:.0f}%" for c, k in calls[area].most_common(4) if 100 * k / n >= 1
        )
        print(f"| {area} | {100 * n / total:.1f}% | {100 * kernel[area] / n:.0f}% | {top} |")


if __name__ == "__main__":
    main()
