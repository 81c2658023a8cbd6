"""Drivers for meters and charger hardware, each behind a small Protocol."""
