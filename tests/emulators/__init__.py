"""Local HTTP emulators of the billing APIs, all driven by ``dataset.py``."""
