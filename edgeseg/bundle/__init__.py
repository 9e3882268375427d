"""Engine bundles: the manifest contract, integrity and compatibility checks, engine choice."""

from edgeseg.bundle.device import DeviceInfo, probe_device
from edgeseg.bundle.manifest import MANIFEST_NAME, EngineRecord, Manifest, is_bundle, load_manifest
from edgeseg.bundle.select import select_engine
from edgeseg.bundle.verify import incompatibility, integrity_problems, sha256_file

__all__ = [
    "MANIFEST_NAME", "DeviceInfo", "EngineRecord", "Manifest", "incompatibility", "integrity_problems",
    "is_bundle", "load_manifest", "probe_device", "select_engine", "sha256_file",
]
