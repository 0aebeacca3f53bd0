"""A rollout's timeline as a PNG, for operators who would rather look than read: requests
per second and errors, p50/p99 latency, the backends nginx has up per upstream and app
host, and each replica's replacement (from its release record) with the time its
backend was out of nginx (from the serving sampler). Time is seconds from the roll's start."""
import collections
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from loadgen import percentile  # noqa: E402


def _per_second(samples, t0):
    buckets = collections.defaultdict(list)
    for s in samples:
        buckets[math.floor(s.start - t0)].append(s)
    seconds = sorted(buckets)
    ok = [sum(1 for s in buckets[t] if s.ok) for t in seconds]
    failed = [sum(1 for s in buckets[t] if not s.ok) for t in seconds]
    p50 = [percentile([s.latency * 1000 for s in buckets[t]], 50) for t in seconds]
    p99 = [percentile([s.latency * 1000 for s in buckets[t]], 99) for t in seconds]
    return seconds, ok, failed, p50, p99


def write_timeline(path, title, samples, marks, steps, serving, addresses):
    """``samples``: the load's; ``marks``: its marks (roll_start, roll_end); ``steps``:
    [(host, step)] from the release records, each step with ``end`` (the epoch of its ``at``);
    ``serving``: a stopped ServingSampler;
    ``addresses``: {backend address: app host}."""
    t0 = marks["roll_start"]
    seconds, ok, failed, p50, p99 = _per_second(samples, t0)
    rows = sorted({(host, step["name"]) for host, step in steps})
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(12, 10), height_ratios=[2, 2, 2, max(2, len(rows) * 0.35)])
    load, latency, up, gantt = axes
    fig.suptitle(title)

    load.bar(seconds, ok, width=1.0, color="tab:green", label="2xx per s")
    load.bar(seconds, failed, width=1.0, bottom=ok, color="tab:red", label="non-2xx or socket error per s")
    load.set_ylabel("requests / s")
    load.legend(loc="lower left", fontsize="small")

    latency.plot(seconds, p50, color="tab:blue", label="p50")
    latency.plot(seconds, p99, color="tab:orange", label="p99")
    latency.set_ylabel("latency (ms)")
    latency.legend(loc="upper left", fontsize="small")

    lines = collections.defaultdict(lambda: ([], []))
    for at, states in serving.samples:
        for upstream, backends in states.items():
            for host in sorted(set(addresses.values())):
                count = sum(1 for b, s in backends.items() if addresses.get(b.rsplit(":", 1)[0]) == host and s == "up")
                xs, ys = lines[(upstream, host)]
                xs.append(at - t0)
                ys.append(count)
    for (upstream, host), (xs, ys) in sorted(lines.items()):
        up.step(xs, ys, where="post", label="%s on %s" % (upstream, host))
    up.set_ylabel("backends up")
    up.set_ylim(bottom=-0.2)
    up.legend(loc="lower left", fontsize="small", ncol=2)

    colors = dict((host, "C%d" % i) for i, host in enumerate(sorted({h for h, _ in rows})))
    address_of = dict((host, address) for address, host in addresses.items())
    row_of_backend = {}
    for host, step in steps:
        y = rows.index((host, step["name"]))
        if step.get("port"):
            row_of_backend["%s:%d" % (address_of[host], step["port"])] = y
        if step.get("seconds") is not None:
            gantt.broken_barh([(step["end"] - step["seconds"] - t0, step["seconds"])], (y - 0.3, 0.6),
                              color=colors[host])
    for _upstream, backend, went, back in serving.out_spans():
        if backend in row_of_backend:
            end = back if back is not None else marks.get("roll_end", went)
            gantt.broken_barh([(went - t0, max(0.1, end - went))], (row_of_backend[backend] - 0.45, 0.15),
                              color="black")
    gantt.set_yticks(range(len(rows)))
    gantt.invert_yaxis()
    gantt.set_yticklabels(["%s %s" % row for row in rows], fontsize="small")
    gantt.set_xlabel("seconds from the roll's start (bars: replacement per release record; "
                     "black: out of nginx)")

    for ax in axes:
        ax.axvline(0, color="grey", linestyle=":")
        if "roll_end" in marks:
            ax.axvline(marks["roll_end"] - t0, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
