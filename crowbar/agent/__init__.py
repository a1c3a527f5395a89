"""The discovery agent: busybox sh and awk scripts that run in the discovery image's initramfs.

There is no Python in the image, so this package only carries the scripts; `initramfs_files`
says where each goes. The contract between the agent and the server follows.

Boot
    The kernel command line names the server: ``crowbar.url=http://ADDR:PORT``; a machine the
    server already knows also gets ``crowbar.nonce=<one-time nonce>`` (docs/security.md). /init
    mounts /proc, /sys and /dev, loads the image's drivers and starts the agent, which brings every
    NIC up and runs DHCP on the first one with link that gets a lease (udhcpc keeps renewing it).

1. Discovery, unauthenticated: ``POST {url}/api/v2/discovery`` with ``Content-Type:
   application/json``, ``X-Crowbar-Nonce: <nonce>`` when the kernel command line has one, and the
   inventory (below, at most 256 KiB) as the body. A 2xx answer is a JSON object
   ``{"node": "d52-54-00-12-34-56.example.com", "token": "<opaque>", ...}``; the token may hold any
   printable characters but spaces. A known machine without a valid nonce is refused (403; 409
   when its node does not boot the discovery image any more): after three refusals in a row the
   agent reboots the machine, whose next boot script carries a fresh nonce (or boots what its node
   boots now). 429 (too many new machines) is retried after 20-40 s, anything else or no answer
   every 5 s.

2. Instructions: ``GET {url}/api/v2/agent/next`` with ``Authorization: Bearer <token>``.
   A 2xx answer is one of::

       {"action": "wait", "seconds": 5}        poll again after `seconds` (default 5): whole seconds
                                               the server chooses, longer in a larger fleet, jittered
       {"action": "run", "job": "<id>", "script": "<sh script>", "timeout": 600}
       {"action": "reboot"}                    reboot -f: nothing is acknowledged
       {"action": "poweroff"}                  poweroff -f: nothing is acknowledged

   Job ids match ``[A-Za-z0-9._-]+``; ``timeout`` (seconds) is optional. The agent sends
   ``Prefer: wait=50`` (RFC 7240): the server may hold the request up to that long (long poll) and
   answers as soon as a job or an action is queued for the node; a hold that ends with nothing to
   do answers ``{"action": "wait", "seconds": 0}`` (ask again now). A server that does not hold
   (no such header, or too many held already) answers at once, as above. A 401 (the server no longer knows the token:
   the node was deleted, or re-found by a later boot) sends the agent back to step 1, so a node
   deleted on the server is simply discovered again; any other failure is retried every 5 s with
   the same token (a restarting server does not cost the node its token). Unknown actions are
   logged and skipped.

3. Job result: the script runs with ``sh`` in /tmp, stdin /dev/null, with ``CROWBAR_URL``,
   ``CROWBAR_NODE``, ``CROWBAR_TOKEN`` and ``CROWBAR_JOB`` in its environment (an install job posts
   its phases to ``{url}/api/v2/agent/progress/<id>`` with the token, no sooner than the ``next``
   seconds of the last answer, and writes the token into the
   installed system for its call home: ``POST {url}/api/v2/agent/booted``); past ``timeout`` it gets SIGTERM (exit code 143). Then
   ``POST {url}/api/v2/agent/jobs/<id>`` with the same Authorization header and the body
   ``{"exit_code": 0, "output": "..."}``: stdout and stderr together, the last 256 KiB, every line
   ending in a newline, and ``Prefer: next-action``. A 2xx answer ends the job; otherwise it is
   tried 5 times, 5 s apart, then given up. The agent then polls again (step 2), unless the answer
   is its next instruction (a server that honours the preference answers what step 2 would, taken
   at once, never held: ``run``, ``reboot`` or ``poweroff`` are followed without a poll; a
   ``wait`` of 0 seconds means poll now; a server that does not answers ``{"job": ..., "state":
   "done"}``, which has no action).

Inventory (what the agent posts in step 1)::

    {"kernel": "6.1.0-28-amd64",                 uname -r
     "firmware": "bios",                         or "uefi" (/sys/firmware/efi exists)
     "boot_mac": "52:54:00:12:34:56",            the NIC that got the DHCP lease
     "cpu": {"model": "...", "count": 2},        logical CPUs
     "memory": {"total_bytes": 479387648,        MemTotal: what the kernel manages
                "installed_bytes": 536329216},   RAM in the firmware's memory map (E820)
     "disks": [{"name": "vda", "size_bytes": 1073741824, "model": null, "serial": null,
                "rotational": true, "removable": false}],
     "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56", "speed": 1000, "driver": "e1000",
               "bus": "0000:00:03.0", "link": true}],
     "dmi": {"vendor": "QEMU", "product": "Standard PC (Q35 + ICH9, 2009)", "serial": null},
     "bmc": {"vendor": "MontaVista Software, Inc.",   ipmitool mc info, in-band (/dev/ipmi0)
             "manufacturer_id": 4753, "product_id": 51969, "firmware": "1.00", "ipmi_version": "2.0",
             "channel": 1,                       the LAN channel read below
             "mac": "00:00:00:00:00:00",         ipmitool lan print 1: the BMC's own NIC
             "address_source": "Static Address", "address": "0.0.0.0", "netmask": "0.0.0.0",
             "gateway": "0.0.0.0", "vlan": null}}     null: no 802.1q VLAN

Values the machine does not report are null: a NIC's speed (Mb/s) without link or from virtio,
a virtio disk's model. Compare memory with ``installed_bytes``, within a fraction of a percent
of the RAM (qemu's -m); MemTotal also lacks what the kernel keeps for itself, 11% of a 512 MiB
VM (the example above). Disks leave out loop, ram, zram, floppy and optical devices; NICs are
the physical ones (no lo, bridge, bond or VLAN), with the fields `crowbar.network.conduits.Nic`
reads. ``bmc`` is null when the machine shows no IPMI device (ipmi_si found no KCS, SMIC or BT
interface in ACPI or SMBIOS) or its BMC does not answer; ``vendor`` is the name ipmitool knows for
the manufacturer id: the image carries IANA's names of the usual server makers only
(crowbar.provisioner.image.BMC_VENDORS), others read "Unknown (0x...)": compare ``manufacturer_id``. Strings are sent byte for byte: firmware may put non-UTF-8 bytes in DMI strings, so the
server should decode the body with ``errors="replace"``.
"""

from __future__ import annotations

from importlib import resources

# initramfs path -> file in this package. Everything is installed executable.
_LAYOUT = {
    "init": "init",
    "etc/udhcpc/default.script": "udhcpc.script",
    "usr/lib/crowbar/agent.sh": "agent.sh",
    "usr/lib/crowbar/inventory.sh": "inventory.sh",
    "usr/lib/crowbar/json.awk": "json.awk",
}


def _read(layout: dict[str, str]) -> dict[str, bytes]:
    package = resources.files(__name__)
    return {target: package.joinpath(source).read_bytes() for target, source in layout.items()}


def initramfs_files() -> dict[str, bytes]:
    """The agent's files by their path in the initramfs (no leading slash)."""
    return _read(_LAYOUT)


# The node-side pieces of an installed system (crowbar.provisioner.osimage puts them in every OS
# image): the call-home service that moves an installed node to readying and ready at first boot,
# cloud-init's datasource settings, SSH host keys made per node.
_INSTALLED = {
    "usr/lib/crowbar/crowbar-callhome": "installed/crowbar-callhome",
    "etc/systemd/system/crowbar-callhome.service": "installed/crowbar-callhome.service",
    "etc/cloud/cloud.cfg.d/90-crowbar.cfg": "installed/90-crowbar.cfg",
    "etc/systemd/system/ssh.service.d/crowbar-hostkeys.conf": "installed/ssh-hostkeys.conf",
}


def installed_files() -> dict[str, bytes]:
    """The node-side files of an installed system by their path in its root (no leading slash)."""
    return _read(_INSTALLED)
