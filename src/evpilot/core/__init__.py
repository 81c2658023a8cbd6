"""Pure charging domain: no I/O, no clocks; time is always a parameter."""
