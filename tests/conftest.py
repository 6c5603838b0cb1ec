"""Shared test settings: hypothesis without deadlines (CI machines are shared and noisy)."""

from hypothesis import HealthCheck, settings

settings.register_profile("evonas", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", deadline=None, max_examples=10_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("evonas")
