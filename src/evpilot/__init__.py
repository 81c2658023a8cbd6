"""evpilot: a smart-charging controller for electric vehicles."""

__version__ = "0.1.0"
