"""The virtual lab (`crowbar lab`): qemu VMs that PXE-boot from a Crowbar server, on bridges inside a
network namespace of the lab's own, so the whole provisioning flow runs on one machine.

- `lab.py`: the lab itself (namespace, bridges, taps, server, VMs; state in `<lab dir>/lab.json`);
- `vm.py`: one VM's MACs, taps, disk and qemu command line;
- `cli.py`: `crowbar lab up | status | console | down`;
- `barclamps/lab`: role `lab-facts`, a script that reports facts only the node itself knows, and
  role `lab-vlan`, which creates a VLAN subinterface on the node and pings a peer over it.
"""

from crowbar.lab.lab import Lab, LabError

__all__ = ["Lab", "LabError"]
