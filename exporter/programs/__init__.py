"""User programs (issue 14): `<name>.yaml` in cloudflare/ebpf_exporter's config format
beside `<name>.bpf.c` (bcc C, compiled at start) or `<name>.bpf.o` (a compiled CO-RE
object, loaded unchanged by libbpf), exported as `podsnoop_<metric>`.

spec.py reads and checks the YAML, decoders.py turns map key bytes into label values,
collector.py reads the maps at scrape time, objects.py loads and attaches a .bpf.o,
manager.py compiles (bcc), loads, attaches and unloads, crd.py follows PodsnoopPrograms,
errors.py is the one error a program fails with.
"""
