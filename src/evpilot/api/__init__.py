"""External APIs: one facade module each, translating to the core."""
