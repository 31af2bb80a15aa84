"""setup.cfg's lower bounds and the versions `make test-lowest` runs the suite with.

CI runs the suite again with .ci/lowest-versions.txt: a bound holds only as long as
that file pins each requirement at the bound's own release, not at a later one; a bound
is therefore a version that was released (pycountry 23.12.7, not 23.12).
"""

from __future__ import annotations

import configparser

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .servers import ROOT

LOWEST = ROOT / ".ci" / "lowest-versions.txt"


def declared() -> dict[str, Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    lines += setup["options.extras_require"]["dev"].splitlines()
    requirements = [Requirement(line) for line in lines if line.strip()]
    return {canonicalize_name(r.name): r for r in requirements}


def pinned() -> dict[str, Version]:
    pins = {}
    for line in LOWEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def lower_bound(requirement: Requirement) -> Version:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"{requirement}: setup.cfg gives lower bounds (>=), one each"
    return bounds[0]


def test_every_requirement_is_pinned_at_its_lower_bound():
    requirements, pins = declared(), pinned()
    assert sorted(pins) == sorted(requirements)
    for name, requirement in requirements.items():
        bound, pin = lower_bound(requirement), pins[name]
        # Versions compare padded: 3.1 == 3.1.0, and 3.1.3 is a later release, not the bound.
        assert pin == bound, (requirement, pin)
