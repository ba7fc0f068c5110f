"""Identity collector: parsers against real captured outputs (tests/fixtures/health, see
/work/shared/fixtures/SOURCES.md), the machine_id rule, and collect_identity."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from atlas.agent import __version__
from atlas.agent.collectors import identity
from atlas.contract.schema import MachineInfo

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "health"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- ioreg


def test_ioreg_vm_opencore_truncated_lines() -> None:
    info = identity.parse_ioreg_platform(fixture("ioreg_c_IOPlatformExpertDevice_d2_vm_opencore_truncated_lines.txt"))
    assert info.serial_number is None  # replaced with "..." by the reporter
    assert info.platform_uuid is None  # likewise "..."
    assert info.model == "iMacPro1,1"
    assert info.manufacturer == "Acidanthera"
    assert info.board_id == "Mac-7BA5B2D9E42DDD94"


def test_ioreg_old_macbook21_full_tree() -> None:
    info = identity.parse_ioreg_platform(fixture("ioreg_c_IOPlatformExpertDevice_full_tree_macbook2.1_old.txt"))
    assert info.serial_number == "W87305UMYA8"
    assert info.model == "MacBook2,1"
    assert info.platform_uuid == "00000000-0000-1000-8000-001B633026B1"
    assert info.manufacturer == "Apple Inc."
    assert info.board_id == "Mac-F4208CAA"


def test_ioreg_grep_lines_without_node_header_hand_written() -> None:
    # Hand-written edge case: `ioreg ... | grep IOPlatformSerialNumber` style input.
    info = identity.parse_ioreg_platform('    "IOPlatformSerialNumber" = "C02ABCDEF123"\n')
    assert info.serial_number == "C02ABCDEF123"
    assert info.model is None


# --------------------------------------------------------------------------- system_profiler


def test_sp_hardware_json_m4_max() -> None:
    hw = identity.parse_sp_hardware_json(fixture("system_profiler_SPHardwareDataType_json_m4max_mac16.5.json"))
    assert hw.serial_number == "C6XW4X7JX1"
    assert hw.model_identifier == "Mac16,5"
    assert hw.model_name == "MacBook Pro"
    assert hw.model_number == "Z1FS0002ULL/A"
    assert hw.chip == "Apple M4 Max"
    assert hw.processor_name is None
    assert hw.cores == "proc 16:12:4"
    assert hw.memory == "48 GB"
    assert hw.platform_uuid == "6D9530A4-90A2-5A28-B133-3D6011CC7772"
    assert hw.firmware_version == "11881.140.96"


def test_sp_hardware_text_m1_full_report() -> None:
    hw = identity.parse_sp_hardware_text(fixture("system_profiler_text_hardware_memory_power_m1_bigsur11.0.txt"))
    assert hw.serial_number == "E9O1Q6W5FAKE"
    assert hw.model_identifier == "MacBookAir10,1"
    assert hw.model_name == "MacBook Air"
    assert hw.model_number is None
    assert hw.chip == "Apple M1"
    assert hw.cores == "8 (4 performance and 4 efficiency)"
    assert hw.memory == "16 GB"
    assert hw.platform_uuid == "2B05150B-FA33-45BD-90F0-3369BF908E3E"
    assert hw.firmware_version == "6723.81.1"


def test_sp_hardware_text_mini_two_reports_first_wins() -> None:
    hw = identity.parse_sp_hardware_text(fixture("system_profiler_hardware_detaillevel_mini_m1pro_m2pro.txt"))
    assert hw.model_identifier == "MacBookPro18,1"
    assert hw.model_name == "MacBook Pro"
    assert hw.model_number == "MK183D/A"
    assert hw.chip == "Apple M1 Pro"
    assert hw.cores == "10 (8 performance and 2 efficiency)"
    assert hw.memory == "16 GB"
    assert hw.firmware_version == "10151.61.4"
    assert hw.serial_number is None  # -detailLevel mini omits it
    assert hw.platform_uuid is None


def test_sp_hardware_text_second_report_m2_pro() -> None:
    text = fixture("system_profiler_hardware_detaillevel_mini_m1pro_m2pro.txt")
    second = text[text.index("Hardware:", 1) :]
    hw = identity.parse_sp_hardware_text(second)
    assert hw.model_identifier == "Mac14,10"
    assert hw.model_number == "MNW83D/A"
    assert hw.chip == "Apple M2 Pro"
    assert hw.cores == "12 (8 performance and 4 efficiency)"


def test_sp_hardware_text_on_power_report_finds_nothing() -> None:
    hw = identity.parse_sp_hardware_text(fixture("system_profiler_SPPowerDataType_text_charging.txt"))
    assert hw == identity.HardwareInfo()


# --------------------------------------------------------------------------- sw_vers


def test_sw_vers_sonoma_two_tabs() -> None:
    os_info = identity.parse_sw_vers(fixture("sw_vers_sonoma14.4.1.txt"))
    assert os_info.product_name == "macOS"
    assert os_info.product_version == "14.4.1"
    assert os_info.product_version_extra is None
    assert os_info.build_version == "23E224"
    assert os_info.display() == "macOS 14.4.1 (23E224)"


def test_sw_vers_sequoia_single_tab() -> None:
    os_info = identity.parse_sw_vers(fixture("sw_vers_sequoia15.5_single_tab.txt"))
    assert os_info.product_name == "macOS"
    assert os_info.product_version == "15.5"
    assert os_info.build_version == "24F74"
    assert os_info.display() == "macOS 15.5 (24F74)"


def test_sw_vers_catalina_spaces() -> None:
    os_info = identity.parse_sw_vers(fixture("sw_vers_catalina10.15.5_spaces.txt"))
    assert os_info.product_name == "Mac OS X"
    assert os_info.product_version == "10.15.5"
    assert os_info.build_version == "19F101"
    assert os_info.display() == "Mac OS X 10.15.5 (19F101)"


def test_sw_vers_rsr_product_version_extra() -> None:
    os_info = identity.parse_sw_vers(fixture("sw_vers_ventura13.3.1_rsr_productversionextra_grep.txt"))
    assert os_info.product_version == "13.3.1"  # not "(a)": ProductVersionExtra is its own key
    assert os_info.product_version_extra == "(a)"
    assert os_info.product_name is None  # grep excerpt: no ProductName/BuildVersion lines
    assert os_info.build_version is None
    assert os_info.display() == "13.3.1 (a)"


def test_os_version_display_with_rsr_and_build() -> None:
    # Values as in the brief's example; the RSR fixture itself lacks ProductName/BuildVersion.
    os_info = identity.OsInfo("macOS", "13.3.1", "(a)", "22E772610a")
    assert os_info.display() == "macOS 13.3.1 (a) (22E772610a)"
    assert identity.OsInfo().display() is None


# --------------------------------------------------------------------------- sysctl, os-release


def test_sysctl_mojave_full() -> None:
    values = identity.parse_sysctl(fixture("sysctl_a_mojave10.14.6.txt"))
    assert len(values) == 1286
    assert identity.cpu_brand(values) == "Intel(R) Core(TM) i5-8279U CPU @ 2.40GHz"
    assert values["kern.hostname"] == "kbrazil-mac"
    assert values["kern.osproductversion"] == "10.14.6"
    assert values["kern.osversion"] == "18G5033"
    assert values["hw.ncpu"] == "8"
    assert values["hw.memsize"] == "17179869184"
    assert values["vm.loadavg"] == "{ 2.57 2.41 2.24 }"
    assert values["machdep.cpu.thermal.sensor"] == "1"
    assert "hw.model" not in values  # this capture has no hw.model line


def test_sysctl_m1_subset() -> None:
    values = identity.parse_sysctl(fixture("sysctl_subset_m1_bigsur11.0.txt"))
    assert identity.cpu_brand(values) == "Apple M1"
    assert values["machdep.cpu.core_count"] == "8"


def test_sysctl_early_arm64_apple_processor() -> None:
    values = identity.parse_sysctl(fixture("sysctl_machdep_cpu_apple_processor_early_arm64.txt"))
    assert identity.cpu_brand(values) == "Apple processor"
    assert values["machdep.cpu.thread_count"] == "8"


def test_sysctl_m1_pro_perflevels() -> None:
    values = identity.parse_sysctl(fixture("sysctl_apple_silicon_m1pro_cpu_perflevel_excerpt.txt"))
    assert identity.cpu_brand(values) is None
    assert values["hw.ncpu"] == "10"
    assert values["hw.perflevel0.physicalcpu"] == "8"
    assert values["hw.perflevel1.physicalcpu"] == "2"


def test_os_release_hand_written() -> None:
    # Hand-written edge case in the os-release(5) syntax: quotes, escapes, comments.
    text = '# comment\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\nQUOTED="a \\"b\\""\nbad line\n'
    fields = identity.parse_os_release(text)
    assert fields["NAME"] == "Debian GNU/Linux"
    assert fields["ID"] == "debian"
    assert fields["QUOTED"] == 'a "b"'
    assert identity.os_release_version(fields) == "Debian GNU/Linux 12"
    assert identity.os_release_version({"PRETTY_NAME": "Ubuntu 24.04 LTS"}) == "Ubuntu 24.04 LTS"
    assert identity.os_release_version({}) is None


def test_os_release_of_this_machine() -> None:
    path = Path("/etc/os-release")
    if not path.exists():
        pytest.skip("no /etc/os-release here")
    assert identity.os_release_version(identity.parse_os_release(path.read_text()))


ODD_INPUTS = ["", "\x00", ":::", '"x" = $', "+-o x  <class IOPlatformExpertDevice", "{}", "[" * 5000, "é" * 100]
PARSERS = [
    identity.parse_ioreg_platform,
    identity.parse_sp_hardware_json,
    identity.parse_sp_hardware_text,
    identity.parse_sw_vers,
    identity.parse_os_release,
    identity.parse_sysctl,
]


@pytest.mark.parametrize("text", ODD_INPUTS, ids=range(len(ODD_INPUTS)))
@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
def test_identity_parsers_never_raise(parser, text: str) -> None:  # type: ignore[no-untyped-def]
    parser(text)


# --------------------------------------------------------------------------- machine_id and bounds


def test_serial_sentinels() -> None:
    assert identity.clean_serial("...") is None
    assert identity.clean_serial("0") is None
    assert identity.clean_serial("To Be Filled By O.E.M.") is None
    assert identity.clean_serial("000000000000") is None
    assert identity.clean_serial(" C6XW4X7JX1 ") == "C6XW4X7JX1"


def test_build_identity_rules_and_bounds() -> None:
    ident = identity.build_identity(
        serial_number="C6XW4X7JX1", hostname="h" * 300, model="m" * 200, os_version="o" * 200
    )
    assert ident.machine_id == "c6xw4x7jx1"
    assert ident.serial_number == "C6XW4X7JX1"
    assert len(ident.hostname) == 255
    assert len(ident.model) == 128
    assert len(ident.os_version) == 128
    assert ident.agent_version == __version__
    MachineInfo.model_validate(ident.as_machine())
    configured = identity.build_identity(
        serial_number="C6XW4X7JX1", hostname="h", model="", os_version="", machine_id="fleet-42"
    )
    assert configured.machine_id == "fleet-42"
    nothing = identity.build_identity(serial_number="...", hostname="mac-7", model=None, os_version=None)
    assert nothing.serial_number == "unknown"
    assert nothing.machine_id == "host-mac-7"
    MachineInfo.model_validate(nothing.as_machine())


# --------------------------------------------------------------------------- collect_identity


def test_collect_identity_darwin_with_captured_outputs() -> None:
    outputs = {
        "ioreg": "ioreg_c_IOPlatformExpertDevice_full_tree_macbook2.1_old.txt",
        "sw_vers": "sw_vers_sonoma14.4.1.txt",
    }
    calls: list[str] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(argv[0])
        return fixture(outputs[argv[0]])

    ident = identity.collect_identity(run, platform="darwin", hostname="lab-mac")
    assert ident.serial_number == "W87305UMYA8"
    assert ident.machine_id == "w87305umya8"
    assert ident.model == "MacBook2,1"
    assert ident.os_version == "macOS 14.4.1 (23E224)"
    assert ident.hostname == "lab-mac"
    assert calls == ["ioreg", "sw_vers"]
    MachineInfo.model_validate(ident.as_machine())


def test_collect_identity_darwin_vm_falls_back_to_system_profiler() -> None:
    # Captures from two different machines: the VM's ioreg has no serial, so the JSON one is used.
    outputs = {
        "ioreg": "ioreg_c_IOPlatformExpertDevice_d2_vm_opencore_truncated_lines.txt",
        "system_profiler": "system_profiler_SPHardwareDataType_json_m4max_mac16.5.json",
        "sw_vers": "sw_vers_sequoia15.5_single_tab.txt",
    }
    ident = identity.collect_identity(lambda argv: fixture(outputs[argv[0]]), platform="darwin", hostname="vm")
    assert ident.serial_number == "C6XW4X7JX1"
    assert ident.model == "iMacPro1,1"
    assert ident.os_version == "macOS 15.5 (24F74)"


def test_collect_identity_never_raises_when_everything_fails() -> None:
    def run(argv: Sequence[str]) -> str:
        raise FileNotFoundError(argv[0])

    problems: list[str] = []
    ident = identity.collect_identity(run, platform="darwin", hostname="mac-1", problems=problems)
    assert ident.serial_number == "unknown"
    assert ident.machine_id == "host-mac-1"
    assert ident.os_version  # falls back to platform.system() + release
    assert len(problems) == 3
    MachineInfo.model_validate(ident.as_machine())


def test_collect_identity_linux_dmi_serial_not_readable_falls_back_to_machine_id() -> None:
    # Hand-written file contents (os-release and machine-id as on this dev VM; a QEMU product_name).
    files = {
        "/etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
        "/etc/machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        "/sys/class/dmi/id/product_name": "Standard PC (Q35 + ICH9, 2009)\n",
    }

    def read_file(path: str) -> str:
        if path == "/sys/class/dmi/id/product_serial":
            raise PermissionError(13, "Permission denied", path)
        return files[path]

    ident = identity.collect_identity(read_file=read_file, platform="linux", hostname="dev")
    assert ident.serial_number == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert ident.machine_id == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert ident.model == "Standard PC (Q35 + ICH9, 2009)"
    assert ident.os_version == "Debian GNU/Linux 12 (bookworm)"


def test_collect_identity_on_this_linux_machine_for_real() -> None:
    ident = identity.collect_identity(machine_id=None)
    assert ident.hostname == socket.gethostname()
    assert ident.os_version != ""
    assert ident.serial_number != ""
    assert ident.machine_id != ""
    assert ident.agent_version == __version__
    MachineInfo.model_validate(ident.as_machine())


def test_collect_identity_configured_machine_id() -> None:
    assert identity.collect_identity(machine_id="fleet-7").machine_id == "fleet-7"
