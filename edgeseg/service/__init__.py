"""The device daemon: ``edgeseg serve`` under systemd (readiness, watchdog, reload, logging)."""
