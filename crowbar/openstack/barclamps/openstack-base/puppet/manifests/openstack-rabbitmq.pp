# The message bus: puppetlabs-rabbitmq (Debian's puppet-module-puppetlabs-rabbitmq) with its class
# parameters from Hiera, and the user OpenStack's services connect as. Outside Crowbar:
#   puppet apply --hiera_config hiera.yaml openstack-rabbitmq.pp
# with the keys of crowbar.openstack.config.rabbitmq_hiera in the Hiera data. Crowbar publishes
# the bus's host, port and user in the role's wall itself (crowbar/services/openstack.py).
#
# The user is made with rabbitmqctl in execs, not the module's rabbitmq_user type: its provider gives
# each rabbitmqctl call 20 s, and under emulation one call takes 30-65 s (an Erlang VM starts per
# call), so the type retries for 30 rounds and fails (docs/neutron.md).
include rabbitmq

$user = lookup('openstack::rabbitmq::user')
$password = lookup('openstack::rabbitmq::password')
exec { "rabbitmq user ${user}":
  command   => "rabbitmqctl add_user '${user}' '${password}'",
  unless    => "rabbitmqctl -q list_users | grep -q '^${user}\\b'",
  path      => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'],
  timeout   => 900,
  logoutput => on_failure,
  require   => Class['rabbitmq'],
}
-> exec { "rabbitmq permissions ${user}":
  command   => "rabbitmqctl set_permissions -p / '${user}' '.*' '.*' '.*'",
  unless    => "rabbitmqctl -q list_user_permissions '${user}' | grep -q '^/'",
  path      => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'],
  timeout   => 900,
  logoutput => on_failure,
}
