#!/usr/bin/env python3
"""Medians of benches/side-by-side.sh results as a Markdown table, with the
Warren/RabbitMQ ratio of each figure (same scenario, same tool, same run).

usage: python3 benches/summarize.py RESULTS.jsonl
"""
import json
import statistics
import sys

# scenario -> (label, {tool: dotted key}) per headline figure, in table order
FIGURES = {
    "transient": [
        ("consumed msg/s", {"amqp-bench": "consumed_per_s", "warren perf": "consumed_per_s"}),
        ("broker CPU us/msg", {"amqp-bench": "broker_cpu_us_per_msg", "warren perf": "broker_cpu_us_per_msg"}),
    ],
    "durable-confirm": [
        ("confirmed msg/s", {"amqp-bench": "confirmed_per_s", "warren perf": "confirmed_per_s"}),
        ("broker CPU us/msg", {"amqp-bench": "broker_cpu_us_per_msg", "warren perf": "broker_cpu_us_per_msg"}),
    ],
    "fanout": [
        ("deliveries/s", {"amqp-bench": "routed_per_s", "warren perf": "routed_per_s"}),
        ("broker CPU us/delivery",
         {"amqp-bench": "broker_cpu_us_per_msg", "warren perf": "broker_cpu_us_per_delivery"}),
    ],
    "latency": [
        ("p50 us", {"amqp-bench": "p50_us", "warren perf": "latency_us.p50"}),
        ("p99 us", {"amqp-bench": "p99_us", "warren perf": "latency_us.p99"}),
    ],
    "backlog": [
        ("publish msg/s", {"amqp-bench": "publish_per_s", "warren perf": "publish_per_s"}),
        ("drain msg/s", {"amqp-bench": "drain_per_s", "warren perf": "drain_per_s"}),
        ("RSS B/queued msg", {"amqp-bench": "rss_bytes_per_msg", "warren perf": "rss_bytes_per_msg"}),
    ],
    "connections": [
        ("opened/s", {"amqp-bench": "open_per_s", "warren perf": "open_per_s"}),
        ("RSS KiB/conn", {"amqp-bench": "rss_kib_per_conn", "warren perf": "rss_kib_per_conn"}),
    ],
    "queues": [
        ("declared+bound/s", {"warren perf": "declared_per_s"}),
        ("deleted/s", {"warren perf": "deleted_per_s"}),
        ("RSS B/queue", {"warren perf": "rss_bytes_per_queue"}),
    ],
    "churn": [
        ("open+close/s", {"warren perf": "connections_per_s"}),
        ("broker CPU us/conn", {"warren perf": "broker_cpu_us_per_conn"}),
    ],
}


def get(row, dotted):
    v = row
    for part in dotted.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v if isinstance(v, (int, float)) else None


def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    print("| scenario | figure | tool | runs | RabbitMQ (median) | Warren (median) | Warren / RabbitMQ |")
    print("|---|---|---|---|---|---|---|")
    for scenario, figures in FIGURES.items():
        for label, keys in figures:
            for tool, key in keys.items():
                vals = {}
                for broker in ("rabbitmq", "warren"):
                    got = [get(r, key) for r in rows
                           if r.get("bench") == scenario and r.get("tool") == tool and r.get("broker") == broker]
                    vals[broker] = [v for v in got if v is not None]
                if not vals["rabbitmq"] and not vals["warren"]:
                    continue
                med = {b: statistics.median(v) if v else None for b, v in vals.items()}
                ratio = (f"{med['warren'] / med['rabbitmq']:.2f}x"
                         if med["warren"] is not None and med["rabbitmq"] else "-")
                runs = f"{len(vals['rabbitmq'])}/{len(vals['warren'])}"
                print(f"| {scenario} | {label} | {tool} | {runs} | {fmt(med['rabbitmq'])} | "
                      f"{fmt(med['warren'])} | {ratio} |")
    failed = [r for r in rows if r.get("failed") or r.get("ok") is False]
    for r in failed:
        print(f"\nfailed: {r.get('broker')} {r.get('tool')} {r.get('bench')} run {r.get('run')}: {r.get('error', '')}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
