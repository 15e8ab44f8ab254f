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


def free_port_pair() -> int:
    """A port P with P+1 free too (`cxrtriage serve` gives the worker the next port)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not port_open(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports")
