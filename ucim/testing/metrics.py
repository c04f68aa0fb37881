"""Reading a component's ``/metrics`` in tests and benches."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(url: str) -> list[Sample]:
    """Every sample the ``/metrics`` at ``url`` serves."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
