#!/bin/sh
# Prints this machine's inventory as JSON, read from /proc and /sys only (the discovery image
# has no udev, lshw or dmidecode) and, for the BMC, from ipmitool in-band. Usage: inventory.sh [BOOT_NIC]
# Shell collects one record per value, json.awk turns the records into JSON and does all quoting.

LIB=${CROWBAR_LIB:-/usr/lib/crowbar}
SYS=${CROWBAR_SYSFS:-/sys}
DEV=${CROWBAR_DEV:-/dev}
IPMITOOL=${CROWBAR_IPMITOOL:-ipmitool}  # tests point it at a BMC over the LAN
boot_nic=$1

rd() { head -n 1 "$1" 2>/dev/null; }  # one sysfs value; empty when absent or unreadable
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5"; }

# The PCI address (0000:00:03.0) of a device or of the nearest PCI device above it: a virtio NIC's
# device is virtio0, whose parent is the PCI function.
pci_address() {
    p=$(readlink -f "$1") || return
    while [ -n "$p" ] && [ "$p" != / ]; do
        case ${p##*/} in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) echo "${p##*/}"; return ;;
        esac
        p=${p%/*}
    done
}

# The BMC as the host sees it in-band (KCS or SSIF through ipmi_si, /dev/ipmi0): "Key : value"
# lines of `ipmitool mc info` and `lan print 1`. bmc is null when there is no device or it does
# not answer.
field() { sed -n "s/^$1 *: *//p" "$2" | head -n 1; }
bmc() {
    [ -c "$DEV/ipmi0" ] || [ -c "$DEV/ipmi/0" ] || [ -c "$DEV/ipmidev/0" ] || [ -n "$CROWBAR_IPMITOOL" ] || return 1
    info=${TMPDIR:-/tmp}/crowbar-mc.$$ lan=${TMPDIR:-/tmp}/crowbar-lan.$$
    if ! timeout 20 $IPMITOOL mc info > "$info" 2>/dev/null; then rm -f "$info"; return 1; fi
    timeout 20 $IPMITOOL lan print 1 > "$lan" 2>/dev/null
    product=$(field "Product ID" "$info")
    vlan=$(field "802.1q VLAN ID" "$lan")
    rec bmc - vendor s "$(field "Manufacturer Name" "$info")"
    rec bmc - manufacturer_id n "$(field "Manufacturer ID" "$info")"
    rec bmc - product_id n "${product%% *}"
    rec bmc - firmware s "$(field "Firmware Revision" "$info")"
    rec bmc - ipmi_version s "$(field "IPMI Version" "$info")"
    rec bmc - channel n 1
    rec bmc - mac s "$(field "MAC Address" "$lan")"
    rec bmc - address_source s "$(field "IP Address Source" "$lan")"
    rec bmc - address s "$(field "IP Address" "$lan")"
    rec bmc - netmask s "$(field "Subnet Mask" "$lan")"
    rec bmc - gateway s "$(field "Default Gateway IP" "$lan")"
    rec bmc - vlan n "$vlan"
    rm -f "$info" "$lan"
}

{
    rec . - kernel s "$(uname -r)"
    if [ -d "$SYS/firmware/efi" ]; then rec . - firmware s uefi; else rec . - firmware s bios; fi
    [ -n "$boot_nic" ] && rec . - boot_mac s "$(rd "$SYS/class/net/$boot_nic/address")"

    rec cpu - model s "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    rec cpu - count n "$(grep -c '^processor' /proc/cpuinfo)"
    # MemTotal is what the kernel manages: on a small machine 10% or more under the RAM, as the
    # kernel keeps its image and page tables. The firmware's memory map (E820 "System RAM")
    # says what is installed, less a few hundred KiB of holes.
    rec memory - total_bytes n "$(awk '/^MemTotal:/ { print $2 * 1024; exit }' /proc/meminfo)"
    installed=0
    for d in "$SYS"/firmware/memmap/*; do
        [ "$(rd "$d/type")" = "System RAM" ] || continue
        installed=$((installed + $(rd "$d/end") - $(rd "$d/start") + 1))
    done
    [ $installed -gt 0 ] || installed=""
    rec memory - installed_bytes n "$installed"

    # Real disks only: no loop, ram, zram, floppy or optical devices. Sizes are always in
    # 512-byte sectors in /sys/block, whatever the disk's block size.
    for d in "$SYS"/block/*; do
        n=${d##*/}
        case $n in loop* | ram* | zram* | fd* | sr* | \*) continue ;; esac
        sectors=$(rd "$d/size")
        rec disks "$n" name s "$n"
        rec disks "$n" size_bytes n "${sectors:+$((sectors * 512))}"
        rec disks "$n" model s "$(rd "$d/device/model")"
        rec disks "$n" serial s "$(rd "$d/device/serial" || rd "$d/serial")"
        rec disks "$n" rotational b "$(rd "$d/queue/rotational")"
        rec disks "$n" removable b "$(rd "$d/removable")"
    done

    # Physical NICs only (those with a device): no lo, bridges, bonds or VLANs. Field names are
    # those crowbar.network.conduits.Nic reads; speed is in Mb/s, unknown (-1 or unreadable
    # without link) becomes null.
    for d in "$SYS"/class/net/*; do
        [ -e "$d/device" ] || continue
        n=${d##*/}
        driver=$(readlink "$d/device/driver")
        rec nics "$n" name s "$n"
        rec nics "$n" mac s "$(rd "$d/address")"
        rec nics "$n" speed n "$(rd "$d/speed")"
        rec nics "$n" driver s "${driver##*/}"
        rec nics "$n" bus s "$(pci_address "$d/device")"
        rec nics "$n" link b "$(rd "$d/carrier")"
    done

    rec dmi - vendor s "$(rd "$SYS/class/dmi/id/sys_vendor")"
    rec dmi - product s "$(rd "$SYS/class/dmi/id/product_name")"
    rec dmi - serial s "$(rd "$SYS/class/dmi/id/product_serial")"
    bmc || rec . - bmc s ""
} | awk -v mode=inventory -v lists="disks nics" -f "$LIB/json.awk"
