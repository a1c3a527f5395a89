"""Networks in the database: the template, its changes, IP allocation, node interface plans, Neutron.

The rules live in `crowbar.network` (pure: model, ipam, plan, render, neutron, linuxbridge); this
package stores what they accept and serialises what must not race. One module per job:

- `templates`: the stored template: read (through `TemplateCache`), store, seed, export; list
  and show networks; `TemplateInvalid`.
- `changes`: import the template, create, update or delete a network, with preview (impact:
  diff, nodes, invalidated allocations, the noderoles of roles declaring `reruns-on-networks`
  that it re-queues) and force (re-allocate or release, every move listed).
- `allocations`: IP allocation (one node, or many in one transaction; `allocate_for` takes
  either, as the API does), release, listing, the addresses of nodes, and the database-backed
  view of taken addresses that ipam reads.
- `plans`: node interface plans, rendered as JSON, networkd, netplan or ifupdown.
- `neutron`: Neutron settings, tenant network segments, `whois`, a node's agent files.
- `_db` (private): table handles, the settings row, the retry budget, the row locks (the locking
  protocol is written there); `_fixed` (private): the stored Neutron settings and nova_fixed's
  provider segment, which storing a template keeps in step.

Imports inside the package only go down these layers (a module imports only modules of lower
layers, so there is no cycle):

    5  neutron                 imports plans, allocations, templates, _fixed, _db
    4  changes   plans         import allocations, templates (changes also _db)
    3  allocations             imports templates, _db
    2  templates               imports _fixed, _db
    1  _fixed                  imports _db
    0  _db

Shared helpers come from their one home: crowbar.db.sql (chunks, is_postgresql),
crowbar.db.events (record), crowbar.services.lookup (node_refs).

This module re-exports the public functions, so callers write `from crowbar.services import
network` and `network.allocate(...)`. Every function takes the caller's Session (the unit of work)
and neither commits nor rolls back; savepoints are used where a UNIQUE constraint may refuse a
concurrent winner's choice.
"""

from crowbar.services.network.allocations import (
    address_key, allocate, allocate_for, allocate_many, list_allocations, node_addresses, release,
)
from crowbar.services.network.changes import (
    create_network, delete_network, import_template, update_network,
)
from crowbar.services.network.neutron import (
    NEUTRON_DEFAULTS, NEUTRON_FILES, TunnelIdInUse, create_tenant_network, delete_tenant_network,
    list_tenant_networks, neutron_settings, node_neutron, segment_marker, set_neutron_settings,
    show_tenant_network, whois,
)
from crowbar.services.network.plans import PLAN_FORMATS, node_netplans, node_plan, node_plans, render_plan
from crowbar.services.network.templates import (
    ENV_TEMPLATE, TemplateCache, TemplateInvalid, current_template, export, list_networks,
    seed_template, show_network,
)

__all__ = [
    # templates
    "ENV_TEMPLATE", "TemplateCache", "TemplateInvalid", "current_template", "export",
    "list_networks", "seed_template", "show_network",
    # changes
    "create_network", "delete_network", "import_template", "update_network",
    # allocations
    "address_key", "allocate", "allocate_for", "allocate_many", "list_allocations", "node_addresses",
    "release",
    # plans
    "PLAN_FORMATS", "node_netplans", "node_plan", "node_plans", "render_plan",
    # neutron
    "NEUTRON_DEFAULTS", "NEUTRON_FILES", "TunnelIdInUse", "create_tenant_network",
    "delete_tenant_network", "list_tenant_networks", "neutron_settings", "node_neutron",
    "segment_marker", "set_neutron_settings", "show_tenant_network", "whois",
]
