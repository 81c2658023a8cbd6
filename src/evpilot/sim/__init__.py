"""Physical simulator of cars, house load, PV, home battery and meters."""
