"""prometheus-client custom collectors, one per signal, read from BPF maps at scrape time."""
