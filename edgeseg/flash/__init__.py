"""Engine flashing: the on-device bundle store, signatures, and reloading the running daemon."""

from edgeseg.flash.daemon import DaemonNotice, reload_daemon
from edgeseg.flash.store import EngineStore, Inspection, InstallResult, Switch, inspect_bundle

__all__ = ["DaemonNotice", "EngineStore", "InstallResult", "Inspection", "Switch", "inspect_bundle", "reload_daemon"]
