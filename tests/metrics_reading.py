"""Read the service's ``/metrics`` as samples, with prometheus-client's own text parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, frozenset of label items): value}`` from ``GET base_url/metrics``."""
    request = urllib.request.Request(f"{base_url}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when absent (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: dict, name: str) -> dict[frozenset, float]:
    """Every sample called ``name``, by its labels."""
    return {labels: sample_value for (sample_name, labels), sample_value in samples.items() if sample_name == name}
