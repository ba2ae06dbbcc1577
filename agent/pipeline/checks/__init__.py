"""Edge checks: alarm limits, gas detectors, interlock and bypass state (events at once)."""
