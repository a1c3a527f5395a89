import pytest

from crowbar.provisioner import ipxe, lifecycle
from crowbar.provisioner.ipxe import BootParams, Installer

PARAMS = BootParams(server_url="http://192.168.124.10:3000", boot_url="http://192.168.124.10:3000/boot/")
MAC = "52:54:00:12:34:56"
INSTALLERS = {"debian-12": Installer(kernel="debian-12/linux", initrd="debian-12/initrd.gz",
                                     args=("auto=true", "priority=critical"))}


def lines(script: str) -> list[str]:
    return script.splitlines()


def test_every_script_is_an_ipxe_script_that_names_the_machine():
    for bootenv in (None, "discovery", "local", "none", "debian-12-install", "centos-9-install"):
        script = ipxe.render(bootenv, PARAMS, mac=MAC.upper(), installers=INSTALLERS)
        assert script.startswith("#!ipxe\n# crowbar: 52:54:00:12:34:56, bootenv ")
        assert script.endswith("\n")


@pytest.mark.parametrize("bootenv", [None, "discovery"])
def test_unknown_machines_and_discovery_boot_the_discovery_image(bootenv):
    script = lines(ipxe.render(bootenv, PARAMS))
    kernel = next(line for line in script if line.startswith("kernel "))
    assert kernel.split()[1] == "http://192.168.124.10:3000/boot/discovery/vmlinuz"
    args = kernel.split()[2:]
    assert "initrd=initrd.img" in args
    assert "crowbar.url=http://192.168.124.10:3000" in args
    assert {"console=tty0", "console=ttyS0,115200n8"} <= set(args)
    assert "BOOTIF=01-${netX/mac:hexhyp}" in args
    assert kernel.endswith(" || goto retry")
    assert "initrd http://192.168.124.10:3000/boot/discovery/initrd.img || goto retry" in script
    # a failed fetch or boot is tried again (FETCH_TRIES in all) before going back to the firmware
    assert (script.index(":load") < script.index(kernel) < script.index("boot || goto retry")
            < script.index(":retry") < script.index("iseq ${tries} xxx && goto failed ||")
            < script.index("set tries ${tries}x") < script.index("goto load") < script.index(":failed")
            < script.index("exit 1"))
    assert script[script.index("set tries ${tries}x") - 2:script.index("set tries ${tries}x")] == ["imgfree ||",
                                                                                                  "sleep 5 ||"]
    assert "# crowbar: unknown machine, bootenv discovery" in script


def test_a_known_nodes_discovery_script_carries_its_nonce_on_the_kernel_line():
    nonce = "AbC-123_" * 4
    kernel = next(line for line in lines(ipxe.render("discovery", PARAMS, mac=MAC, nonce=nonce))
                  if line.startswith("kernel "))
    assert f"crowbar.nonce={nonce}" in kernel.split()[2:]
    assert "crowbar.nonce" not in ipxe.render("discovery", PARAMS, mac=MAC)
    assert "crowbar.nonce" not in ipxe.render("local", PARAMS, mac=MAC, nonce=nonce)
    for bad in ("short", "with space in it 12345", "${evil}-0123456789abcdef", "x" * 129):
        with pytest.raises(ValueError, match="nonce"):
            ipxe.render("discovery", PARAMS, nonce=bad)


def test_discovery_paths_and_console_are_parameters():
    params = BootParams(server_url="http://s", boot_url="http://s/boot",
                        discovery_kernel="http://mirror/k", discovery_initrd="img/initramfs.gz",
                        console=("ttyS1,9600",))
    script = ipxe.render("discovery", params)
    assert "kernel http://mirror/k initrd=initramfs.gz crowbar.url=http://s" in script
    assert "initrd http://s/boot/img/initramfs.gz" in script
    assert "console=ttyS1,9600" in script and "console=tty0" not in script


def test_local_boots_the_first_disk_on_bios_and_returns_to_the_firmware_on_uefi():
    script = lines(ipxe.render("local", PARAMS, mac=MAC))
    assert script[2:] == [
        "echo Crowbar: booting from the local disk",
        "iseq ${platform} efi && goto firmware ||",
        "sanboot --no-describe --drive 0x80 || goto firmware",
        ":firmware",
        "exit 1",
    ]


def test_os_install_boots_that_installer_with_its_args_and_the_server_url():
    script = ipxe.render("debian-12-install", PARAMS, mac=MAC, installers=INSTALLERS)
    assert ("kernel http://192.168.124.10:3000/boot/debian-12/linux initrd=initrd.gz auto=true "
            "priority=critical crowbar.url=http://192.168.124.10:3000") in script
    assert "initrd http://192.168.124.10:3000/boot/debian-12/initrd.gz || goto retry\n" in script
    assert "echo Crowbar: booting the debian-12 installer" in script


def test_an_os_without_installer_gets_a_clear_error_and_goes_back_to_the_firmware():
    script = lines(ipxe.render("centos-9-install", PARAMS, mac=MAC, installers=INSTALLERS))
    assert script[2:] == [
        "echo Crowbar: no installer configured for centos-9 (configured: debian-12)",
        "echo Crowbar: set the node's OS or configure the installer, then reboot it",
        "exit 1",
    ]
    assert not any(line.startswith(("kernel", "shell")) for line in script)
    assert "(configured: none)" in ipxe.render("debian-12-install", PARAMS)


def test_none_boots_nothing():
    script = lines(ipxe.render("none", PARAMS))
    assert script[-1] == "exit 1" and not any(line.startswith("kernel") for line in script)


@pytest.mark.parametrize("bootenv", ["sledgehammer", "-install", "Bad OS-install", "${x}-install"])
def test_unknown_bootenvs_and_odd_os_names_are_refused(bootenv):
    with pytest.raises(ValueError):
        ipxe.render(bootenv, PARAMS)


def test_every_lifecycle_state_has_a_script():
    for state in lifecycle.STATES:
        assert ipxe.render(lifecycle.bootenv_for(state), PARAMS, installers=INSTALLERS)


def test_script_names_round_trip_and_match_what_dnsmasq_hands_out():
    assert ipxe.script_name("52:54:00:AB:CD:EF") == "52-54-00-ab-cd-ef.ipxe"
    assert ipxe.mac_from_script_name("52-54-00-ab-cd-ef.ipxe") == "52:54:00:ab:cd:ef"
    url = ipxe.dhcp_script_url("http://192.168.124.10:3000/boot/")
    assert url == "http://192.168.124.10:3000/boot/${netX/mac:hexhyp}.ipxe"
    # what iPXE's ${netX/mac:hexhyp} expands to is the script name of that MAC
    assert url.replace("${netX/mac:hexhyp}", "52-54-00-ab-cd-ef").endswith(
        "/" + ipxe.script_name("52:54:00:ab:cd:ef"))
    for bad in ("52-54-00-ab-cd.ipxe", "52-54-00-ab-cd-ef.txt", "../etc/passwd.ipxe"):
        with pytest.raises(ValueError):
            ipxe.mac_from_script_name(bad)
