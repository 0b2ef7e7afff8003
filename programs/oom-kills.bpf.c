// oom-kills: OOM kills per container, from the oom:mark_victim tracepoint (no kprobes).
//
// mark_victim fires in the task that ran the OOM killer. Under a container's memory limit
// that is a task of the container whose allocation hit the limit, so the current cgroup is
// the container's. Only tasks in pods are counted.
#include "podsnoop.h"

BPF_HASH(oom_kills_total, u64, u64, 4096);

TRACEPOINT_PROBE(oom, mark_victim)
{
    if (!podsnoop_in_pod())
        return 0;
    u64 cgroup_id = podsnoop_cgroup_id();
    oom_kills_total.increment(cgroup_id);
    return 0;
}
