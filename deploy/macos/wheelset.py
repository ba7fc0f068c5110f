"""The agent's pinned dependency closure for the Mac package, derived from constraints.txt.

    python3 deploy/macos/wheelset.py requirements        # the agent's and the contract's direct dependencies
    python3 deploy/macos/wheelset.py constraints ARCH    # constraints.txt with ARCH's overrides applied
    python3 deploy/macos/wheelset.py check ARCH DIR      # DIR's wheels are exactly pinned, none missing

build-pkg.sh feeds both to ``pip download --only-binary=:all: --platform macosx_12_0_ARCH``; every wheel it
fetches is pinned by constraints.txt, except where wheel-overrides.txt pins another version for one
architecture (a package that stopped publishing wheels for it). tests/deploy/test_packaging.py resolves the same
set for both architectures.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARCHES = ("arm64", "x86_64")
OWN_FOLDERS = ("contract", "agent")  # the Atlas distributions the Mac package carries, built from these folders


def canonical(name: str) -> str:
    """PEP 503 normalized name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def own() -> set[str]:
    """The contract's and the agent's distribution names, from their pyproject.toml: no other name is ours
    (a wheel called atlas-agent is a stranger's, the name being taken on PyPI)."""
    return {canonical(tomllib.loads((REPO / f / "pyproject.toml").read_text())["project"]["name"]) for f in OWN_FOLDERS}


def requirement_name(line: str) -> str:
    return canonical(re.split(r"[\[<>=!~ ;@]", line.strip(), maxsplit=1)[0])


def requirements() -> list[str]:
    """Direct dependencies of the agent and the contract, without the two Atlas distributions."""
    deps: list[str] = []
    ours = own()
    for folder in OWN_FOLDERS:
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]
        deps += [d for d in project["dependencies"] if requirement_name(d) not in ours and d not in deps]
    return deps


def overrides(arch: str) -> dict[str, str]:
    """``name -> pin line`` from wheel-overrides.txt for one architecture."""
    if arch not in ARCHES:
        raise SystemExit(f"unknown architecture {arch!r} (one of {', '.join(ARCHES)})")
    found: dict[str, str] = {}
    for raw in (HERE / "wheel-overrides.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line_arch, pin = line.split(None, 1)
        if line_arch == arch:
            found[requirement_name(pin)] = pin.strip()
    return found


def constraints(arch: str) -> dict[str, str]:
    """``name -> exact version`` for one architecture."""
    pins: dict[str, str] = {}
    lines = (REPO / "constraints.txt").read_text().splitlines() + list(overrides(arch).values())
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"constraints.txt: {line!r} is not an exact pin (name==version)")
        pins[canonical(name)] = version.strip()
    return pins


def check(arch: str, folder: Path) -> list[str]:
    """Problems with the wheels in ``folder``: unpinned, another version than the pin, a dependency missing."""
    pins = constraints(arch)
    ours = own()
    found: dict[str, str] = {}
    problems = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        found[canonical(name)] = version
        if canonical(name) in ours:
            continue
        if canonical(name) not in pins:
            problems.append(f"{wheel.name}: {name} is not pinned in constraints.txt")
        elif pins[canonical(name)] != version:
            problems.append(f"{wheel.name}: constraints pin {name}=={pins[canonical(name)]} for {arch}")
    wanted = ours | {requirement_name(r) for r in requirements()}
    problems += [f"no wheel of {name}" for name in sorted(wanted - set(found))]
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["requirements"] and len(argv) == 1:
        print("\n".join(requirements()))
    elif argv[:1] == ["constraints"] and len(argv) == 2:
        print("\n".join(f"{name}=={version}" for name, version in constraints(argv[1]).items()))
    elif argv[:1] == ["check"] and len(argv) == 3:
        problems = check(argv[1], Path(argv[2]))
        for problem in problems:
            print(f"wheelset: {problem}", file=sys.stderr)
        return 1 if problems else 0
    else:
        print("usage: wheelset.py requirements | constraints ARCH | check ARCH DIR", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
