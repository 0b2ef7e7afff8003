"""`./dev demo`: podsnoop on this node with test pods that exercise every signal, shown by
`podsnoop top`, with a real Prometheus evaluating the shipped alert rules. See demo/run.py.
Demo scaffolding: not part of the installed package (it needs the repository's tests/ and
bpf/testing/)."""
