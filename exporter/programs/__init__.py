"""User programs (issue 14): `<name>.bpf.c` (bcc C) + `<name>.yaml` in cloudflare/
ebpf_exporter's config format, compiled at start and exported as `podsnoop_<metric>`.

spec.py reads and checks the YAML, decoders.py turns map key bytes into label values,
collector.py reads the maps at scrape time, manager.py compiles, attaches and unloads.
"""
