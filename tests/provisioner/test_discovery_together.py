"""Discovery posts that arrive together are written together (provisioning.discover_many, api
groupcommit): each post gets the answer, or the refusal, it would get alone, and a refused post
writes nothing and refuses no other."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from crowbar.api.app import create_app
from crowbar.api.settings import AppSettings
from crowbar.db.models import ApiToken, Event, Node, NodeMac, NodeRole
from crowbar.errors import Conflict, Forbidden, InvalidInput, RateLimited
from crowbar.provisioner.discovery import TokenBucket
from crowbar.services import auth, provisioning
from crowbar.services.boot import UNCHECKED, Peer
from discoverykit import discover, inventory


def _counts(s) -> dict:
    return {"nodes": s.scalar(select(func.count()).select_from(Node)),
            "macs": s.scalar(select(func.count()).select_from(NodeMac)),
            "tokens": s.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.kind == "node")),
            "noderoles": s.scalar(select(func.count()).select_from(NodeRole)),
            "events": s.scalar(select(func.count()).select_from(Event))}


def test_posts_together_get_each_its_own_answer_and_refusals_write_nothing(db):
    with db.session() as s:
        owner = provisioning.discover(s, inventory("52:54:00:0d:00:01"))
        other = provisioning.discover(s, inventory("52:54:00:0d:00:02"))
    with db.session() as s:
        before = _counts(s)
    posts = [
        (inventory("52:54:00:0a:00:01", "52:54:00:0a:00:02"), None, UNCHECKED),  # new
        (inventory("52:54:00:0b:00:01"), None, UNCHECKED),  # new
        (inventory("52:54:00:0a:00:01", "52:54:00:0a:00:02"), None, UNCHECKED),  # the first again: no nonce
        (inventory("52:54:00:0c:00:01"), None, Peer(address="10.0.0.9", checked=True, mac="52:54:00:ff:ff:ff")),
        (inventory("52:54:00:0d:00:01", "52:54:00:0d:00:02"), None, UNCHECKED),  # MACs of two nodes
        (inventory("52:54:00:0e:00:01", "52:54:00:0b:00:01"), None, UNCHECKED),  # the second's MAC: a re-find
        ({"nics": []}, None, UNCHECKED),  # not an inventory
        (inventory("52:54:00:0f:00:01"), None, UNCHECKED),  # new
    ]
    with db.session() as s:
        answers = provisioning.discover_many(s, posts)
    kinds = [type(a).__name__ if isinstance(a, Exception) else ("created" if a["created"] else "found")
             for a in answers]
    assert kinds == ["created", "created", "Forbidden", "Forbidden", "Conflict", "Forbidden", "InvalidInput",
                     "created"]
    assert "nonce" in str(answers[2]) and "none of its NICs" in str(answers[3])
    assert owner["node"] in str(answers[4]) and other["node"] in str(answers[4])
    assert answers[1]["node"] in str(answers[5]) and "nonce" in str(answers[5])
    made = [answers[i] for i in (0, 1, 7)]
    with db.session() as s:
        after = _counts(s)
        # what the three new machines hold: their rows, MACs, a token each, the discovery role
        assert after["nodes"] - before["nodes"] == 3
        assert after["macs"] - before["macs"] == 4
        assert after["tokens"] - before["tokens"] == 3
        assert after["noderoles"] - before["noderoles"] == 3
        for answer, macs in zip(made, (["52:54:00:0a:00:01", "52:54:00:0a:00:02"], ["52:54:00:0b:00:01"],
                                       ["52:54:00:0f:00:01"])):
            node = s.get(Node, answer["id"])
            assert node.name == answer["node"] == provisioning.discovered_name(macs[0], "crowbar.local")
            assert node.state == answer["state"] == "discovered" and node.boot_mac == macs[0]
            assert sorted(s.scalars(select(NodeMac.mac).where(NodeMac.node_id == node.id))) == macs
            assert node.discovery["product_name"] == "Standard PC"
            token = s.scalar(select(ApiToken).where(ApiToken.node_id == node.id))
            assert token.token_hash == auth.hash_token(answer["token"])
        # the owner kept its MACs (none moved), and the refused posts changed nothing of theirs
        assert sorted(s.scalars(select(NodeMac.mac).where(NodeMac.node_id == owner["id"]))) == ["52:54:00:0d:00:01"]
        assert provisioning.node_for_token(s, owner["token"]).id == owner["id"]
        # the events: create and lifecycle for each new node, and its noderole's bind and commit
        new_events = s.scalars(select(Event.action).where(Event.object_type == "node",
                                                           Event.object_id.in_([a["id"] for a in made]))).all()
        assert sorted(new_events) == ["create"] * 3 + ["lifecycle"] * 3


def test_together_the_rate_limit_is_taken_per_new_machine(db):
    limit = TokenBucket(rate=0.001, burst=2)
    posts = [(inventory(f"52:54:00:1a:00:{i:02x}"), None, UNCHECKED) for i in range(4)]
    with db.session() as s:
        answers = provisioning.discover_many(s, posts, limit=limit)
    assert [a["created"] for a in answers[:2]] == [True, True]
    assert all(isinstance(a, RateLimited) and a.retry_after > 0 for a in answers[2:])
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Node).where(Node.name.like("d52-54-00-1a-%"))) == 2


def test_a_refind_among_new_posts_proves_its_nonce_alone(db):
    """A known machine booted again with its nonce is re-found in the batch, beside new ones."""
    from crowbar.provisioner.ipxe import BootParams
    from crowbar.services import boot

    mac = "52:54:00:2a:00:01"
    with db.session() as s:
        first = provisioning.discover(s, inventory(mac))
    with db.session() as s:
        script = boot.boot_script(s, mac, BootParams(server_url="http://x", boot_url="http://x/boot"), UNCHECKED)
    nonce = script.split("crowbar.nonce=")[1].split()[0]
    posts = [(inventory("52:54:00:2b:00:01"), None, UNCHECKED), (inventory(mac), nonce, UNCHECKED),
             (inventory(mac), nonce, UNCHECKED)]  # the same nonce twice: spent by the first
    with db.session() as s:
        answers = provisioning.discover_many(s, posts)
    assert answers[0]["created"] is True
    assert answers[1]["created"] is False and answers[1]["id"] == first["id"]
    assert isinstance(answers[2], Forbidden)
    with db.session() as s:  # the re-find's token is the one that works now
        assert provisioning.node_for_token(s, answers[1]["token"]).id == first["id"]


def test_posts_arriving_together_over_http_are_written_in_fewer_units_and_each_answered(db):
    """A burst of posts: while the first batch is written the others queue, and go in together;
    each machine gets its own node and token, a post that repeats another's MACs its 403."""
    app = create_app(AppSettings(db=db))
    together = app.state.discoveries
    many = provisioning.discover_many
    first = threading.Event()

    def slow_first(*args, **kw):
        if not first.is_set():
            first.set()
            time.sleep(0.3)  # the rest of the burst arrives meanwhile
        return many(*args, **kw)

    bodies = [inventory(f"52:54:00:3a:00:{i:02x}") for i in range(12)] + [inventory("52:54:00:3a:00:00")]
    with TestClient(app) as api, pytest.MonkeyPatch.context() as mp:
        mp.setattr(provisioning, "discover_many", slow_first)
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: discover(api, b), bodies))
        bad = discover(api, content=b"{not json")
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 12 + [403]
    names = {r.json()["node"] for r in answers if r.status_code == 201}
    assert names == {provisioning.discovered_name(f"52:54:00:3a:00:{i:02x}", "crowbar.local") for i in range(12)}
    assert together.largest > 1 and together.batches < len(bodies)
    assert bad.status_code == 422 and json.loads(bad.text)["error"] == "invalid"


def test_refusals_are_the_errors_discover_raises_alone(db):
    """The same refusals as `discover`, whatever the batch: the error classes are the service's."""
    with db.session() as s:
        answers = provisioning.discover_many(s, [({"nics": "x"}, None, UNCHECKED)])
    assert isinstance(answers[0], InvalidInput)
    with db.session() as s:
        provisioning.discover(s, inventory("52:54:00:4a:00:01"))
        provisioning.discover(s, inventory("52:54:00:4a:00:02"))
    with db.session() as s:
        with pytest.raises(Conflict):
            provisioning.discover(s, inventory("52:54:00:4a:00:01", "52:54:00:4a:00:02"))
