// syscalls: every syscall on the node by name, and every failed one by errno.
//
// A port of cloudflare/ebpf_exporter's examples/syscalls (Apache-2.0). syscalls.yaml is
// their examples/syscalls.yaml, unchanged (commit 3b8f4d7397482c1714ed5c9160e69a207044d741),
// to show podsnoop reads their format; this C is written anew in bcc's dialect (raw
// tracepoints instead of their tp_btf programs). Like theirs it counts every task of the
// node, not only pods. Its metrics are podsnoop_syscalls_total and
// podsnoop_syscall_errors_total, the names of podsnoop's own syscall collector: load it
// with --syscalls off (else it is refused with reason name_conflict).
BPF_HASH(syscalls_total, u64, u64, 1024);
BPF_HASH(syscall_errors_total, u64, u64, 1024);

RAW_TRACEPOINT_PROBE(sys_enter)
{
    // args: (struct pt_regs *regs, long id)
    u64 id = ctx->args[1];
    syscalls_total.increment(id);
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    // args: (struct pt_regs *regs, long ret)
    long ret = (long)ctx->args[1];
    if (ret < 0) {
        u64 err = -ret;  // a negative return is the errno
        syscall_errors_total.increment(err);
    }
    return 0;
}
