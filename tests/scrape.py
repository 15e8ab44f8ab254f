"""Reading a real process's Prometheus endpoint in tests."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.servers import LOOPBACK, free_port, port_open


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}"""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def free_port_pair(count: int = 2) -> int:
    """A port P with the next `count - 1` ports free too (`cxrtriage serve` gives its receiver P,
    its classification worker P+1 and its export worker P+2)."""
    for _ in range(50):
        port = free_port()
        if port + count <= 65536 and not any(port_open(port + i) for i in range(1, count)):
            return port
    raise RuntimeError(f"no {count} adjacent free ports")
