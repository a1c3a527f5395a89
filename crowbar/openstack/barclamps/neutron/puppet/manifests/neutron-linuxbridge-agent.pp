# The Linux Bridge agent: puppet-neutron's class, unchanged, parameters from Hiera.
include neutron
include neutron::config
include neutron::agents::ml2::linuxbridge

# What the node needs beneath the agent (found on two lab nodes; docs/neutron.md):
#
# The agent's ARP spoofing protection deletes ebtables rules matched by `--among-src`, which Debian
# 12's default ebtables (the nf_tables one) cannot find ("RULE_DELETE failed"): the agent retried
# for ever and every port stayed BUILD. The legacy ebtables does it.
exec { 'crowbar-ebtables-legacy':
  command  => '/usr/bin/update-alternatives --set ebtables /usr/sbin/ebtables-legacy',
  unless   => '/usr/bin/test "$(/usr/bin/readlink -f /etc/alternatives/ebtables)" = /usr/sbin/ebtables-legacy',
  provider => shell,
  notify   => Anchor['neutron::service::begin'],
}

# The interface each physical network maps to carries only the tenant VLANs the agent adds on it
# (<iface>.501 ...): nothing else on the node configures it, so it stays down, and so does every
# VLAN on it. Bring it up now and at every boot (systemd-networkd, no address of its own).
$mappings = lookup('neutron::agents::ml2::linuxbridge::physical_interface_mappings', Array[String], 'first', [])
$mappings.each |String $mapping| {
  $iface = split($mapping, ':')[1]
  file { "/etc/systemd/network/20-crowbar-${iface}.network":
    content => "# Written by Crowbar's neutron-linuxbridge-agent role\n[Match]\nName=${iface}\n\n[Network]\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n",
  }
  exec { "crowbar-link-up-${iface}":
    command  => "/sbin/ip link set ${iface} up",
    unless   => "/sbin/ip -o link show ${iface} | /bin/grep -q ',UP'",
    provider => shell,
    before   => Anchor['neutron::service::begin'],
  }
}
