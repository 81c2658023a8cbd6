"""Modbus TCP/RTU meters: register maps as data, a shared bus per endpoint, the driver and its twins."""
