"""deploy/macos: the LaunchDaemon plist, install.sh, uninstall.sh and build-pkg.sh, exercised on Linux.

install.sh runs for real against a temporary root (``ATLAS_ROOT``) with ``launchctl`` replaced, at the PATH
level, by a stub that records its arguments. The scripts and the ``contract``/``agent`` sources are copied to
a temporary repository layout first, so that building the packages leaves no ``build/`` behind in the working
tree. pip installs into the temporary venv once per module (``installed``); the other runs reuse that venv
through a symlink and ``--skip-venv``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MACOS = REPO / "deploy" / "macos"
SCRIPTS = ("install.sh", "uninstall.sh", "build-pkg.sh", "postinstall", "uninstall-postinstall")
LABEL = "com.atlas.agent"
PLIST_REL = Path("Library/LaunchDaemons/com.atlas.agent.plist")
VENV_REL = Path("Library/Atlas/venv")
CONFIG_REL = Path("Library/Application Support/Atlas/agent.yaml")
LOGS_REL = Path("Library/Logs/Atlas")
NEWSYSLOG_REL = Path("etc/newsyslog.d/com.atlas.agent.conf")
PID_FILE = "/var/run/com.atlas.agent.pid"

FLEET_SERVER = "https://fleet.example.test:8768"
API_KEY = "api-key-Zq7Xw2Lr9Tp4"
ENCRYPTION_KEY = "eOUGS0c5Lhz9oVIioRte3eImfdNpe5uMoo06vTy/Xro="  # AES-256, base64

BASH = shutil.which("bash") or "/bin/bash"

STUB = """#!/bin/sh
printf '%s\\n' "$*" >> "$LAUNCHCTL_LOG"
if [ "$1" = bootout ]; then
    echo "Boot-out failed: 3: No such process" >&2
    exit 3
fi
"""


@dataclass
class Run:
    root: Path
    proc: subprocess.CompletedProcess[str]
    launchctl_log: Path

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    @property
    def launchctl(self) -> list[str]:
        return self.launchctl_log.read_text().splitlines() if self.launchctl_log.exists() else []


def _ignore_build(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"build", "dist", "__pycache__"} or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's deploy/macos, contract and agent; its bin/ holds the launchctl stub."""
    base = tmp_path_factory.mktemp("launchd")
    repo = base / "repo"
    shutil.copytree(MACOS, repo / "deploy" / "macos")
    for folder in ("contract", "agent"):
        shutil.copytree(REPO / folder, repo / folder, ignore=_ignore_build)
    stub = base / "bin" / "launchctl"
    stub.parent.mkdir()
    stub.write_text(STUB)
    stub.chmod(0o755)
    return base


def run_script(layout: Path, script: str, root: Path, *args: str, **env: str) -> Run:
    log = root.parent / f"{root.name}-launchctl.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    environ.update(
        PATH=f"{layout / 'bin'}{os.pathsep}{os.environ['PATH']}",
        ATLAS_ROOT=str(root),
        PYTHON=sys.executable,
        LAUNCHCTL_LOG=str(log),
    )
    environ.update(env)
    proc = subprocess.run(
        [BASH, str(layout / "repo" / "deploy" / "macos" / script), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Run(root, proc, log)


def install_args(*extra: str) -> list[str]:
    return ["--fleet-server", FLEET_SERVER, "--api-key", API_KEY, "--encryption-key", ENCRYPTION_KEY, *extra]


@pytest.fixture(scope="module")
def installed(layout: Path) -> Run:
    """The one real install (pip into a fresh venv) of this module."""
    root = layout / "root"
    root.mkdir()
    run = run_script(layout, "install.sh", root, *install_args())
    assert run.proc.returncode == 0, run.output
    return run


@pytest.fixture
def clone(installed: Run, tmp_path: Path) -> Path:
    """A copy of the installed root whose venv is a symlink to the installed one."""
    venv = installed.root / VENV_REL

    def skip_venv(directory: str, names: list[str]) -> set[str]:
        return {"venv"} if Path(directory) == venv.parent else set()

    root = tmp_path / "root"
    shutil.copytree(installed.root, root, ignore=skip_venv)
    (root / VENV_REL).symlink_to(venv, target_is_directory=True)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the plist ----------------------------------------------------------------------------------


def test_plist_is_a_launch_daemon_for_the_agent():
    with (MACOS / "com.atlas.agent.plist").open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == LABEL
    shell, flag, script, arg0, *program = plist["ProgramArguments"]
    assert program == [
        "/Library/Atlas/venv/bin/atlas-agent",
        "run",
        "--config",
        "/Library/Application Support/Atlas/agent.yaml",
    ]
    assert (shell, flag, arg0) == ("/bin/sh", "-c", "atlas-agent")
    assert script == f'echo $$ >{PID_FILE} && exec "$@"'  # exec: the pid newsyslog signals is the agent's
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] is True
    assert plist["ThrottleInterval"] == 30
    assert plist["ProcessType"] in {"Background", "Standard"}
    assert "UserName" not in plist  # a LaunchDaemon runs as root
    for key, name in (("StandardOutPath", "agent.log"), ("StandardErrorPath", "agent.err.log")):
        assert Path(plist[key]) == Path("/Library/Logs/Atlas") / name
    path = plist["EnvironmentVariables"]["PATH"].split(":")
    assert {"/usr/sbin", "/usr/bin", "/sbin"} <= set(path)  # wdutil, system_profiler, ioreg, powermetrics, ping


# --- syntax -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script: str):
    path = MACOS / script
    assert path.read_text().startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in path.read_text()
    assert os.access(path, os.X_OK)
    proc = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_pkg_postinstall_installs_offline_from_the_pkg():
    body = (MACOS / "postinstall").read_text()
    assert "/Library/Managed Preferences/com.atlas.agent" in body
    assert '--runtime "$runtime" --wheels "$wheels"' in body
    assert "PYTHON" not in body.replace("unset PYTHON", "")  # only the pkg's own runtime


def test_newsyslog_rule_rotates_both_logs_and_signals_the_agent():
    with (MACOS / "com.atlas.agent.plist").open("rb") as f:
        plist = plistlib.load(f)
    rules = [
        line.split()
        for line in (MACOS / "com.atlas.agent.newsyslog.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(rule[0] for rule in rules) == sorted([plist["StandardOutPath"], plist["StandardErrorPath"]])
    for _name, owner, mode_, count, size, when, flags, pid_file, signal in rules:
        assert (owner, mode_, when) == ("root:wheel", "644", "*")  # "*": rotated by size only
        assert int(count) >= 1
        assert int(size) > 0
        assert "N" not in flags  # N would skip the signal: launchd would keep writing to the rotated file
        assert (pid_file, signal) == (PID_FILE, "15")


# --- install.sh ----------------------------------------------------------------------------------


def test_install_puts_the_agent_in_its_own_venv(installed: Run):
    venv = installed.root / VENV_REL
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import atlas.agent, atlas.contract; print(atlas.agent.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(venv)  # not the test runner's editable install
    console = venv / "bin" / "atlas-agent"
    if console.exists():
        assert os.access(console, os.X_OK)
        assert console.read_text().startswith(f"#!{venv}/bin/python")


def test_install_writes_a_private_config_and_never_prints_keys(installed: Run):
    config = installed.root / CONFIG_REL
    assert mode(config) == 0o600
    assert mode(config.parent) == 0o700
    assert yaml.safe_load(config.read_text()) == {
        "fleet_server": FLEET_SERVER,
        "api_key": API_KEY,
        "encryption_key": ENCRYPTION_KEY,
        "allow_plaintext": False,
    }
    assert FLEET_SERVER in installed.proc.stdout
    assert API_KEY not in installed.output
    assert ENCRYPTION_KEY not in installed.output


def test_installed_agent_reads_the_config(installed: Run):
    """The agent in the venv loads agent.yaml as install.sh wrote it."""
    check = (
        "import sys; from atlas.agent.config import load_agent_config as load; c = load(sys.argv[1]); "
        "print(c.fleet_server, len(c.keyring()), c.allow_plaintext)"
    )
    venv = installed.root / VENV_REL
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check, str(installed.root / CONFIG_REL)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [FLEET_SERVER, "1", "False"]


def test_install_copies_the_plist_and_creates_the_log_folder(installed: Run):
    daemon = installed.root / PLIST_REL
    assert daemon.read_bytes() == (MACOS / "com.atlas.agent.plist").read_bytes()
    assert mode(daemon) == 0o644
    assert (installed.root / LOGS_REL).is_dir()
    newsyslog = installed.root / NEWSYSLOG_REL
    assert newsyslog.read_bytes() == (MACOS / "com.atlas.agent.newsyslog.conf").read_bytes()
    assert mode(newsyslog) == 0o644


def test_install_reloads_the_daemon_with_launchctl(installed: Run):
    assert installed.launchctl == [
        f"bootout system/{LABEL}",
        f"enable system/{LABEL}",  # before bootstrap, which fails for a disabled service
        f"bootstrap system {installed.root / PLIST_REL}",
    ]
    assert "was not loaded" in installed.proc.stdout  # the stub's bootout fails like launchctl's "not loaded"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--fleet-server", FLEET_SERVER, "--api-key", API_KEY],
            "--encryption-key KEY (or ATLAS_ENCRYPTION_KEY) is required",
        ),
        (["--api-key", API_KEY, "--encryption-key", ENCRYPTION_KEY], "--fleet-server URL is required"),
        (["--fleet-server", "fleet.example.test", "--api-key", API_KEY], "--fleet-server must be an http(s):// URL"),
        (install_args("--wheels", "/nonexistent/wheels"), "--wheels /nonexistent/wheels: no such folder"),
        (install_args("--wheels", str(MACOS)), f"--wheels {MACOS} must hold exactly one atlas_fleet_contract-*.whl"),
        (install_args("--skip-venv"), "--skip-venv: there is no virtual environment"),
        (install_args("--bogus"), "unknown option: --bogus"),
    ],
)
def test_install_refuses_before_changing_anything(layout: Path, tmp_path: Path, args: list[str], message: str):
    root = tmp_path / "root"
    root.mkdir()
    run = run_script(layout, "install.sh", root, *args)
    assert run.proc.returncode == 1
    assert f"atlas install: error: {message}" in run.proc.stderr
    assert API_KEY not in run.output
    assert ENCRYPTION_KEY not in run.output
    assert list(root.iterdir()) == []
    assert run.launchctl == []


def test_install_without_encryption_key_is_allowed_with_allow_plaintext(layout: Path, clone: Path):
    (clone / CONFIG_REL).unlink()
    run = run_script(
        layout, "install.sh", clone, "--skip-venv", "--allow-plaintext", "--fleet-server", FLEET_SERVER,
        "--api-key", API_KEY,
    )  # fmt: skip
    assert run.proc.returncode == 0, run.output
    assert "widget logs will be sent in plaintext" in run.proc.stderr
    config = yaml.safe_load((clone / CONFIG_REL).read_text())
    assert config == {"fleet_server": FLEET_SERVER, "api_key": API_KEY, "allow_plaintext": True}


def test_reinstall_keeps_the_config(layout: Path, clone: Path):
    before = (clone / CONFIG_REL).read_bytes()
    run = run_script(layout, "install.sh", clone, "--skip-venv")
    assert run.proc.returncode == 0, run.output
    assert "kept existing" in run.proc.stdout
    assert (clone / CONFIG_REL).read_bytes() == before
    assert run.launchctl[-2:] == [f"enable system/{LABEL}", f"bootstrap system {clone / PLIST_REL}"]

    run = run_script(layout, "install.sh", clone, "--skip-venv", "--fleet-server", "https://other.example.test")
    assert run.proc.returncode == 0, run.output
    assert "ignored because the existing configuration was kept" in run.proc.stderr
    assert (clone / CONFIG_REL).read_bytes() == before


def test_reinstall_with_force_replaces_the_config(layout: Path, clone: Path, tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    odd_key = 'k"ey\\with: yaml # chars'
    run = run_script(
        layout, "install.sh", clone, "--skip-venv", "--force", "--fleet-server", "https://other.example.test",
        "--api-key", odd_key, "--machine-id", "mac-17", "--ca-bundle", str(ca),
        ATLAS_ENCRYPTION_KEY=ENCRYPTION_KEY,
    )  # fmt: skip
    assert run.proc.returncode == 0, run.output
    assert mode(clone / CONFIG_REL) == 0o600
    assert yaml.safe_load((clone / CONFIG_REL).read_text()) == {
        "fleet_server": "https://other.example.test",
        "api_key": odd_key,
        "encryption_key": ENCRYPTION_KEY,
        "allow_plaintext": False,
        "machine_id": "mac-17",
        "ca_bundle": str(ca),
    }
    assert odd_key not in run.output
    assert ENCRYPTION_KEY not in run.output


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh checks the interpreter's owner as root only")


@needs_root
@pytest.mark.parametrize("owner", ["user", "world-writable"])
def test_install_as_root_refuses_a_python_another_user_can_change(layout: Path, tmp_path: Path, owner: str):
    """Like Homebrew's: a user could put code in it that the installer would run as root."""
    marker = tmp_path / "ran"
    brew = tmp_path / "brew"
    (brew / "bin").mkdir(parents=True)
    python = brew / "bin" / "python3"
    python.write_text(f'#!/bin/sh\necho ran >"{marker}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    if owner == "user":
        os.chown(brew / "bin", 65534, 65534)
    else:
        (brew / "bin").chmod(0o777)
    root = tmp_path / "root"
    root.mkdir()
    run = run_script(layout, "install.sh", root, *install_args(), PYTHON=str(python))
    assert run.proc.returncode == 1, run.output
    assert f"{brew / 'bin'} can be changed by a user other than root; refusing to run it as root" in run.proc.stderr
    assert not marker.exists()  # never executed
    assert list(root.iterdir()) == []


@needs_root
def test_install_as_root_refuses_a_symlink_to_a_user_owned_python(layout: Path, tmp_path: Path):
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    python = home / "bin" / "python3"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    os.chown(python, 65534, 65534)
    link = tmp_path / "python3"
    link.symlink_to(python)
    root = tmp_path / "root"
    root.mkdir()
    run = run_script(layout, "install.sh", root, *install_args(), PYTHON=str(link))
    assert run.proc.returncode == 1, run.output
    assert f"PYTHON={python} ({python}): {python} can be changed" in run.proc.stderr


def agent_wheels(dest: Path) -> Path:
    """The pinned closure for this machine and the two Atlas wheels, as build-pkg.sh lays them out."""
    dest.mkdir(parents=True)
    wheelset = [sys.executable, str(MACOS / "wheelset.py")]
    requirements = dest.parent / "requirements.txt"
    constraints = dest.parent / "constraints.txt"
    requirements.write_text(
        subprocess.run([*wheelset, "requirements"], capture_output=True, text=True, check=True).stdout
    )
    constraints.write_text(
        subprocess.run([*wheelset, "constraints", "arm64"], capture_output=True, text=True, check=True).stdout
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    download = [
        *pip,
        "download",
        "--only-binary=:all:",
        "-d",
        str(dest),
        "-r",
        str(requirements),
        "-c",
        str(constraints),
    ]
    subprocess.run(download, check=True, timeout=300)
    for folder in ("contract", "agent"):
        src = dest.parent / "src" / folder
        shutil.copytree(REPO / folder, src, ignore=_ignore_build)
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), str(src)], check=True)
    return dest


@pytest.mark.slow
def test_install_from_the_pkg_runtime_and_wheels_works_offline(layout: Path, tmp_path: Path):
    """The pkg's postinstall path: --runtime unpacks a Python, the venv gets the wheels with no index at all."""
    wheels = agent_wheels(tmp_path / "wheels" / "dest")
    runtime_tree = tmp_path / "runtime-src" / "python" / "bin"
    runtime_tree.mkdir(parents=True)
    (runtime_tree / "python3").symlink_to(os.path.realpath(sys.executable))  # stands in for python-build-standalone
    tarball = tmp_path / "python-arm64.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(tmp_path / "runtime-src"), "python"], check=True)
    root = tmp_path / "root"
    root.mkdir()
    run = run_script(
        layout, "install.sh", root, *install_args("--runtime", str(tarball), "--wheels", str(wheels)),
        PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_FIND_LINKS="",
    )  # fmt: skip
    assert run.proc.returncode == 0, run.output
    assert "offline: dependencies from" in run.proc.stdout
    runtime = root / "Library" / "Atlas" / "python"
    assert (runtime / "bin" / "python3").is_symlink()
    venv_python = root / VENV_REL / "bin" / "python"
    cfg = (root / VENV_REL / "pyvenv.cfg").read_text()
    assert "home = " in cfg
    listed = subprocess.run(
        [str(venv_python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )  # fmt: skip
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}
    pins = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in (tmp_path / "wheels" / "constraints.txt").read_text().split()
    }
    assert {"atlas-fleet-agent", "atlas-fleet-contract", "httpx", "cryptography", "pydantic"} <= set(installed)
    assert not {"atlas-agent", "atlas-contract"} & set(installed), "the old names"
    for name, version in installed.items():
        if name not in {"atlas-fleet-agent", "atlas-fleet-contract", "pip", "setuptools"}:
            assert pins.get(name) == version, name
    assert run.launchctl[-2:] == [f"enable system/{LABEL}", f"bootstrap system {root / PLIST_REL}"]

    # An agent installed by an earlier version, under the old distribution name (only its metadata here).
    site = Path(
        subprocess.run(
            [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    old = site / "atlas_agent-0.1.0.dist-info"
    old.mkdir()
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: atlas-agent\nVersion: 0.1.0\n")
    (old / "INSTALLER").write_text("pip\n")
    (old / "RECORD").write_text("".join(f"{old.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD")))
    again = run_script(  # an upgrade with the same runtime keeps the venv and reinstalls the wheels offline
        layout, "install.sh", root, "--runtime", str(tarball), "--wheels", str(wheels),
        PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
    )  # fmt: skip
    assert again.proc.returncode == 0, again.output
    assert "virtual environment: upgrading" in again.proc.stdout
    assert "removing the old distribution atlas-agent" in again.proc.stdout
    assert not old.exists()
    subprocess.run([str(venv_python), "-c", "import atlas.agent, atlas.contract"], check=True)
    assert not (root / "Library" / "Atlas" / "python.old").exists()


# --- uninstall.sh --------------------------------------------------------------------------------


def test_uninstall_removes_daemon_and_venv_but_keeps_data_and_logs(layout: Path, installed: Run, clone: Path):
    (clone / LOGS_REL / "agent.log").write_text("log line\n")
    (clone / CONFIG_REL).with_name("atlas-agent.db").write_bytes(b"unsent")
    run = run_script(layout, "uninstall.sh", clone)
    assert run.proc.returncode == 0, run.output
    assert run.launchctl == [f"bootout system/{LABEL}"]
    assert not (clone / PLIST_REL).exists()
    assert not os.path.lexists(clone / VENV_REL)
    assert not (clone / "Library" / "Atlas").exists()
    assert (clone / CONFIG_REL).exists()
    assert (clone / CONFIG_REL).with_name("atlas-agent.db").exists()
    assert (clone / LOGS_REL / "agent.log").exists()
    assert "kept configuration and data" in run.proc.stdout
    assert (installed.root / VENV_REL / "bin" / "python").exists()  # only the clone's symlink went


def test_uninstall_purge_removes_data_and_logs(layout: Path, clone: Path):
    run = run_script(layout, "uninstall.sh", clone, "--purge")
    assert run.proc.returncode == 0, run.output
    for rel in (PLIST_REL, VENV_REL, CONFIG_REL.parent, LOGS_REL):
        assert not os.path.lexists(clone / rel), rel
    assert "purged" in run.proc.stdout

    again = run_script(layout, "uninstall.sh", clone)  # nothing left to remove: still succeeds
    assert again.proc.returncode == 0, again.output


# --- build-pkg.sh --------------------------------------------------------------------------------


def test_build_pkg_fails_clearly_without_pkgbuild(tmp_path: Path):
    bin_dir = tmp_path / "bin"  # a PATH without pkgbuild, even on a Mac
    bin_dir.mkdir()
    for tool in ("dirname", "mktemp", "rm"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    proc = subprocess.run(
        [BASH, str(MACOS / "build-pkg.sh"), "--out", str(tmp_path / "out")],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "pkgbuild not found" in proc.stderr
    assert "macOS" in proc.stderr
    assert not (tmp_path / "out").exists()


# --- build-pkg.sh with the Apple tools stubbed -------------------------------------------------------

APPLE_STUB = r"""#!/bin/bash
# Records "tool args..." and fakes the outputs the build reads: pkgbuild keeps a copy of --root/--scripts.
printf '%s %s\n' "$(basename "$0")" "$*" >>"$APPLE_LOG"
args=("$@")
last="${args[-1]}"
case "$(basename "$0")" in
    pkgbuild)
        for ((i = 0; i < ${#args[@]}; i++)); do
            case "${args[i]}" in
                --root) cp -a "${args[i + 1]}" "$APPLE_OUT/root-$(basename "$last")" ;;
                --scripts) cp -a "${args[i + 1]}" "$APPLE_OUT/scripts-$(basename "$last")" ;;
            esac
        done
        echo component >"$last" ;;
    productbuild) echo product >"$last" ;;
    productsign) cp "${args[-2]}" "$last" ;;
    xcrun) if [[ "$1" == notarytool ]]; then echo '{"id": "1", "status": "Accepted"}'; fi ;;
esac
"""


@pytest.fixture(scope="module")
def apple(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ with pkgbuild, productbuild, productsign, xcrun stubs; a runtime.lock of two fake runtimes, cached."""
    base = tmp_path_factory.mktemp("apple")
    (base / "bin").mkdir()
    for tool in ("pkgbuild", "productbuild", "productsign", "xcrun"):
        (base / "bin" / tool).write_text(APPLE_STUB)
        (base / "bin" / tool).chmod(0o755)
    lock = (MACOS / "runtime.lock").read_text()
    release = re.search(r"^RELEASE\s+(\S+)", lock, re.MULTILINE).group(1)
    version = re.search(r"^VERSION\s+(\S+)", lock, re.MULTILINE).group(1)
    (base / "cache").mkdir()
    for arch, triple in (("arm64", "aarch64-apple-darwin"), ("x86_64", "x86_64-apple-darwin")):
        tarball = base / "cache" / f"cpython-{version}+{release}-{triple}-install_only_stripped.tar.gz"
        tarball.write_bytes(f"runtime for {arch}".encode())
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        lock = re.sub(rf"^({arch}\s+{triple}\s+)\S+", rf"\g<1>{digest}", lock, flags=re.MULTILINE)
    (base / "runtime.lock").write_text(lock)
    return base


def build_pkg(apple: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "stub").mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in {"SIGN_IDENTITY", "NOTARY_PROFILE"}}
    environ.update(
        PATH=f"{apple / 'bin'}{os.pathsep}{os.environ['PATH']}",
        PYTHON=sys.executable,
        RUNTIME_LOCK=str(apple / "runtime.lock"),
        RUNTIME_CACHE=str(apple / "cache"),
        APPLE_LOG=str(tmp_path / "apple.log"),
        APPLE_OUT=str(tmp_path / "stub"),
        TMPDIR=str(tmp_path),
    )
    environ.update(env)
    return subprocess.run(
        [BASH, str(MACOS / "build-pkg.sh"), "--version", "1.2.3", "--out", str(tmp_path / "out")],
        env=environ, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_build_pkg_carries_both_runtimes_and_pinned_wheels_and_signs_when_asked(apple: Path, tmp_path: Path):
    proc = build_pkg(apple, tmp_path, SIGN_IDENTITY="Developer ID Installer: Test (TEAM)", NOTARY_PROFILE="atlas")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "Atlas-Agent-1.2.3.pkg",
        "Atlas-Agent-Uninstall-1.2.3.pkg",
    ]
    installer = tmp_path / "stub" / f"root-{LABEL}.pkg" / "Library" / "Atlas" / "installer"
    for arch in ("arm64", "x86_64"):
        assert (installer / "runtime" / f"python-{arch}.tar.gz").read_bytes() == f"runtime for {arch}".encode()
        wheels = {w.name.split("-")[0].lower(): w.name.split("-")[1] for w in (installer / "wheels" / arch).iterdir()}
        assert {"atlas_fleet_agent", "atlas_fleet_contract", "httpx", "pydantic", "pydantic_core", "psutil"} <= set(
            wheels
        )
        assert all(w.endswith(".whl") for w in os.listdir(installer / "wheels" / arch))
    crypto = {a: next((installer / "wheels" / a).glob("cryptography-*.whl")).name for a in ("arm64", "x86_64")}
    assert crypto["x86_64"].startswith("cryptography-48.0.1-")  # wheel-overrides.txt
    assert not crypto["arm64"].startswith("cryptography-48.")
    for name in ("install.sh", "uninstall.sh", f"{LABEL}.plist", f"{LABEL}.newsyslog.conf"):
        assert (installer / name).read_bytes() == (MACOS / name).read_bytes()
    scripts = tmp_path / "stub" / f"scripts-{LABEL}.pkg"
    assert (scripts / "postinstall").read_bytes() == (MACOS / "postinstall").read_bytes()
    uninstall_scripts = tmp_path / "stub" / f"scripts-{LABEL}.uninstall.pkg"
    assert sorted(os.listdir(uninstall_scripts)) == ["postinstall", "uninstall.sh"]

    calls = [line.split()[0] for line in (tmp_path / "apple.log").read_text().splitlines()]
    assert calls == ["pkgbuild", "productbuild", "pkgbuild", "productbuild"] + ["productsign", "xcrun", "xcrun"] * 2
    log = (tmp_path / "apple.log").read_text()
    assert "--nopayload" in log
    assert "productsign --sign Developer ID Installer: Test (TEAM) --timestamp" in log
    assert (
        f"xcrun notarytool submit {tmp_path / 'out' / 'Atlas-Agent-1.2.3.pkg'} --keychain-profile atlas --wait" in log
    )
    assert f"xcrun stapler staple {tmp_path / 'out' / 'Atlas-Agent-Uninstall-1.2.3.pkg'}" in log


def test_build_pkg_refuses_notarization_without_signing_and_an_unlocked_runtime(apple: Path, tmp_path: Path):
    proc = build_pkg(apple, tmp_path, NOTARY_PROFILE="atlas")
    assert proc.returncode == 1
    assert "NOTARY_PROFILE needs SIGN_IDENTITY" in proc.stderr

    unlocked = tmp_path / "runtime.lock"
    unlocked.write_text(re.sub(r"[0-9a-f]{64}", "-", (apple / "runtime.lock").read_text()))
    proc = build_pkg(apple, tmp_path, RUNTIME_LOCK=str(unlocked))
    assert proc.returncode == 1
    assert "no SHA-256 for arm64: run" in proc.stderr
    assert "--lock-runtime" in proc.stderr
    assert not (tmp_path / "apple.log").exists()
    assert not (tmp_path / "out").exists()


def test_lock_runtime_pins_the_release_checksums(tmp_path: Path):
    """--lock-runtime reads the release's SHA256SUMS (curl stubbed) and fills the sha256 column only."""
    lock = tmp_path / "runtime.lock"
    lock.write_text(re.sub(r"[0-9a-f]{64}", "-", (MACOS / "runtime.lock").read_text()))
    text = lock.read_text()
    release = re.search(r"^RELEASE\s+(\S+)", text, re.MULTILINE).group(1)
    version = re.search(r"^VERSION\s+(\S+)", text, re.MULTILINE).group(1)
    sums = {
        triple: hashlib.sha256(triple.encode()).hexdigest()
        for triple in ("aarch64-apple-darwin", "x86_64-apple-darwin")
    }
    listing = "".join(
        f"{sha}  cpython-{version}+{release}-{triple}-install_only_stripped.tar.gz\n" for triple, sha in sums.items()
    )
    listing += f"{'0' * 64}  cpython-{version}+{release}-x86_64-apple-darwin-install_only.tar.gz\n"
    (tmp_path / "bin").mkdir()
    curl = tmp_path / "bin" / "curl"
    curl.write_text(f"#!/bin/sh\necho \"$*\" >>'{tmp_path / 'curl.log'}'\ncat <<'SUMS'\n{listing}SUMS\n")
    curl.chmod(0o755)
    proc = subprocess.run(
        [BASH, str(MACOS / "build-pkg.sh"), "--lock-runtime"],
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "RUNTIME_LOCK": str(lock)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"/releases/download/{release}/SHA256SUMS" in (tmp_path / "curl.log").read_text()
    rows = {line.split()[0]: line.split() for line in lock.read_text().splitlines() if line and line[0] != "#"}
    assert rows["arm64"] == ["arm64", "aarch64-apple-darwin", sums["aarch64-apple-darwin"]]
    assert rows["x86_64"] == ["x86_64", "x86_64-apple-darwin", sums["x86_64-apple-darwin"]]
    assert [line for line in lock.read_text().splitlines() if line.startswith("#")] == [
        line for line in text.splitlines() if line.startswith("#")
    ]


def test_installed_agent_keeps_the_earlier_key_snippet(installed: Run, tmp_path: Path):
    """The guide's ``from fleet_agent.encryption import generate_encryption_key`` works from the installed venv."""
    from .test_seed_compat import run_seed_key_snippet

    proc = run_seed_key_snippet(installed.root / VENV_REL / "bin" / "python", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 1
    assert len(base64.b64decode(proc.stdout.strip(), validate=True)) == 32
