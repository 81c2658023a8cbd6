"""The asyncio runtime: scheduling, staleness, leases, applying allocations, the event bus."""
