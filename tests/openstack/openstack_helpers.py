"""Helpers of the OpenStack services' tests: a small Neutron-shaped HTTP API on 127.0.0.1 (http.server in
a thread, the JSON Neutron 21 answers with noauth), and a deployment whose neutron-server noderole
is active and published that API's URL on its wall, as its run does on a lab node."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import select

from crowbar.db.models import Node, NodeRole, Role
from crowbar.openstack import barclamp_paths, config
from crowbar.services import catalog, deployments, nodes

CONTROLLER = "ctl.example.com"
NET_BLUE = "5f0e4a2c-9b1d-4c3e-8f7a-6b5c4d3e2f10"
NET_RED = "7a1b2c3d-4e5f-4a6b-9c8d-0e1f2a3b4c5d"
NET_FIXED = "0c0ffee0-1111-4222-8333-444455556666"
PORT_VM = "3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
PORT_DHCP = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
PORT_ROUTER = "c4d5e6f7-a8b9-4c0d-8e1f-2a3b4c5d6e7f"
ROUTER = "e1d2c3b4-a596-4877-8695-a4b3c2d1e0f9"
NEUTRON = {
    "networks": [
        {"id": NET_FIXED, "name": "nova_fixed", "provider:network_type": "vlan",
         "provider:physical_network": "physnet1", "provider:segmentation_id": 500},
        {"id": NET_BLUE, "name": "blue", "provider:network_type": "vlan",
         "provider:physical_network": "physnet1", "provider:segmentation_id": 501},
        {"id": NET_RED, "name": "red", "provider:network_type": "vlan",
         "provider:physical_network": "physnet1", "provider:segmentation_id": 502},
    ],
    "ports": [
        {"id": PORT_VM, "name": "vm", "network_id": NET_BLUE, "device_owner": "compute:nova",
         "device_id": "vm-1"},
        {"id": PORT_DHCP, "name": "", "network_id": NET_BLUE, "device_owner": "network:dhcp",
         "device_id": "dhcp-1"},
        {"id": PORT_ROUTER, "name": "", "network_id": NET_RED, "device_owner": "network:router_interface",
         "device_id": ROUTER},
    ],
    "routers": [{"id": ROUTER, "name": "edge"}],
}


class FakeNeutron:
    """Answers GET /v2.0/{networks,ports,routers} from `answers` (a collection set to a status code
    answers that code; to bytes, those bytes); records each request's path and headers."""

    def __init__(self):
        self.answers: dict = json.loads(json.dumps(NEUTRON))
        self.requests: list[tuple[str, dict]] = []
        self.posted: list[dict] = []
        self.post_delay = 0.0  # seconds a POST takes to answer, after the network is made
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's name)
                fake.requests.append((self.path, dict(self.headers)))
                path = self.path.split("?")[0]
                collection = path.removeprefix("/v2.0/")
                answer = fake.answers.get(collection) if path.startswith("/v2.0/") else None
                if answer is None:
                    status, body = 404, b'{"NeutronError": {"type": "HTTPNotFound"}}'
                elif isinstance(answer, int):
                    status, body = answer, b'{"NeutronError": {"message": "the secret stack trace"}}'
                elif isinstance(answer, bytes):
                    status, body = 200, answer
                else:
                    status, body = 200, json.dumps({collection: answer}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802  POST /v2.0/networks: Neutron's network, or `answers["create"]`
                # (a status code answers that code with Neutron's refusal; bytes, a 201 with them)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.requests.append((self.path, dict(self.headers)))
                fake.posted.append(body)
                answer = fake.answers.get("create")
                if isinstance(answer, int):
                    status, out = answer, json.dumps({"NeutronError": {
                        "type": "VlanIdInUse", "message": "Unable to create the network. The VLAN 501 on "
                        "physical network physnet1 is in use."}}).encode()
                elif isinstance(answer, bytes):
                    status, out = 201, answer
                else:
                    made = {**body.get("network", {}), "id": str(uuid.uuid4()), "status": "ACTIVE"}
                    fake.answers["networks"].append(made)
                    status, out = 201, json.dumps({"network": made}).encode()
                time.sleep(fake.post_delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-neutron", daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def deploy_neutron_server(db, deployment: str, node: str, url: str | None) -> int:
    """`deployment` with neutron-server (and what it requires) bound to `node` and committed, every
    noderole active as after its runs, neutron-server's wall publishing `url`. Its noderole's id."""
    with db.session() as s:
        if not s.scalar(select(Role.id).where(Role.name == config.SERVER_ROLE)):
            for path in barclamp_paths():
                catalog.import_barclamp(s, path)
        if not s.scalar(select(Node.id).where(Node.name == node)):
            nodes.create_node(s, node, bind_roles=False)
        deployments.create_deployment(s, deployment)
        deployments.bind(s, deployment, config.SERVER_ROLE, node)
        deployments.commit(s, deployment)
    with db.session() as s:
        found = None
        for nr, role in s.execute(select(NodeRole, Role.name).join(Role, Role.id == NodeRole.role_id)
                                  .join(Node, Node.id == NodeRole.node_id).where(Node.name == node)):
            nr.state = "active"
            if role == config.SERVER_ROLE:
                nr.wall = {"openstack": {"neutron": {"url": url}}} if url else {}
                found = nr.id
        return found
