"""Android devices for UI-Genie: one device interface, simulated and adb backends, a leased pool."""
