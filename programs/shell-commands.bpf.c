// shell-commands: bash's readline() return values (the line typed) in pods, counted per
// container by the first word only. Attached by podsnoop to every bash file pods run
// (attach.uprobes in shell-commands.yaml).
#include "podsnoop.h"

struct command_key {
    u64 cgroup_id;
    char command[16];
};

BPF_HASH(shell_commands_total, struct command_key, u64, 4096);

int uretprobe_readline(struct pt_regs *ctx)
{
    if (!podsnoop_in_pod())
        return 0;
    const char *line = (const char *)PT_REGS_RC(ctx);
    if (!line)
        return 0;
    char head[16] = {};
    if (bpf_probe_read_user_str(head, sizeof(head), line) <= 0)
        return 0;
    int skip = 0;  // leading blanks
#pragma unroll
    for (int i = 0; i < 15; i++)
        if (skip == i && (head[i] == ' ' || head[i] == '\t'))
            skip++;
    struct command_key key = {.cgroup_id = podsnoop_cgroup_id()};
    if (bpf_probe_read_user_str(key.command, sizeof(key.command), line + skip) <= 0)
        return 0;
    int end = 0;  // cut at the first blank: only the first word is kept
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (key.command[i] == ' ' || key.command[i] == '\t' || key.command[i] == '\n')
            end = 1;
        if (end)
            key.command[i] = 0;
    }
    if (!key.command[0])
        return 0;
    shell_commands_total.increment(key);
    return 0;
}
