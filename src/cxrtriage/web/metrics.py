"""/metrics: computed from the database at scrape time (a custom collector), so the numbers are
right however many receivers and workers run. Labels carry states, verdicts and model versions,
never patient data. Rates (such as the positive rate) come from the counters in PromQL."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cxrtriage.db.monitoring import metric_counts
from cxrtriage.db.session import Database

_FAMILIES = [
    ("instances", CounterMetricFamily, "cxrtriage_instances_stored",
     "Instances stored by the receivers", []),
    ("classifications", CounterMetricFamily, "cxrtriage_classifications",
     "Images classified, by model version and flag", ["model", "model_version", "flagged"]),
    ("feedback", CounterMetricFamily, "cxrtriage_feedback",
     "Verdicts given by radiologists (a replaced verdict counts again)", ["verdict", "model_version"]),
    ("studies", GaugeMetricFamily, "cxrtriage_studies", "Studies by state", ["state"]),
    ("exports", GaugeMetricFamily, "cxrtriage_sr_exports", "SR and heatmap exports by state and kind",
     ["state", "kind"]),
]


class DatabaseCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as session:
            counts = metric_counts(session)
        for key, family_type, name, documentation, labels in _FAMILIES:
            family = family_type(name, documentation, labels=labels)
            for label_values, value in counts[key]:
                family.add_metric([label_values[label] for label in labels], value)
            yield family


def registry_for(db: Database) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db))
    return registry
