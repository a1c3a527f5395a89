"""Step 4: the openstack-base roles and neutron-server through the real Puppet jig over SSH into a
VM booted from debian-12-openstack, Hiera keys from crowbar.openstack.config (what the server's
prepare hook places), then GET /v2.0/networks through the forwarded API port."""
import json, sys, tempfile, time, urllib.request
from pathlib import Path
from crowbar.jigs.base import NodeInfo, RunContext
from crowbar.jigs.puppet import PuppetJig
from crowbar.openstack import barclamp_paths, config

ADDRESS = "10.0.2.15"   # the VM's address on qemu's user network (its "admin" address here)
KEY = b"feasibility"
bus = {"host": ADDRESS, "port": 5672, "user": "openstack", "password": config.derived_secret(KEY, 1, "rabbitmq")}
db = {"host": ADDRESS, "user": "neutron", "name": "neutron", "password": config.derived_secret(KEY, 1, "database")}
node = NodeInfo(id=1, name="vm", admin=False, attrs={"crowbar": {"ssh": {
    "address": "127.0.0.1", "port": int(sys.argv[1]), "user": "root", "key": "/tmp/neutron-work/id_ed25519"}}})
hiera = {
    "openstack-rabbitmq": config.rabbitmq_hiera(ADDRESS, bus["password"]),
    "openstack-database": config.database_hiera(ADDRESS, db["password"]),
    "neutron-server": config.neutron_hiera("neutron-server", address=ADDRESS, bus=bus, database=db,
                                           network_vlan_ranges="physnet1:500:2500"),
    **{role: config.neutron_hiera(role, address=ADDRESS, bus=bus, physical_interface_mappings={"physnet1": "eth0"})
       for role in ("neutron-linuxbridge-agent", "neutron-dhcp-agent", "neutron-l3-agent")},
}
trees = {}
for path in barclamp_paths():
    for f in sorted((path / "puppet").rglob("*")):
        if f.is_file():
            trees.setdefault(path.name, []).append({"name": f.relative_to(path / "puppet").as_posix(), "content": f.read_text()})
results = {}
for role in sys.argv[2:]:
    scripts = trees["openstack-base" if role.startswith("openstack-") else "neutron"]
    work = Path(tempfile.mkdtemp(prefix=f"jig-{role}-"))
    ctx = RunContext(run_id=1, noderole_id=1, node=node, role=role, jig="puppet",
                     attrs={**hiera[role], "crowbar": {"puppet": {"timeout": 3000}}}, scripts=scripts, workdir=work,
                     output=lambda text: print(text, end="", flush=True))
    started = time.monotonic()
    result = PuppetJig().run(ctx)
    took = time.monotonic() - started
    results[role] = (result.ok, round(took, 1))
    print(f"\n@@ {role}: ok={result.ok} {took:.1f} s")
    print("\n".join(result.log.splitlines()[-15:]))
    if not result.ok:
        break
print("@@ results", json.dumps(results))
