"""The one strict pydantic base of every document edgeseg reads: config, manifests, ledgers.

Unknown keys are refused (a typo never silently means "use the default"), records are frozen
(a validated document is not changed behind its validator's back) and defaults are validated
like given values. It lives at the package's top, importing nothing of edgeseg, so that every
schema module (config sections, bundle manifest, device manifest, self-test ledger, export
recipes) can share it without an import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen record that refuses unknown keys and validates its defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
