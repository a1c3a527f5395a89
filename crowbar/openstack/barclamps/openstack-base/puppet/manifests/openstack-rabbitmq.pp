# The message bus: puppetlabs-rabbitmq (Debian's puppet-module-puppetlabs-rabbitmq) with its class
# parameters from Hiera, and the user OpenStack's services connect as. Outside Crowbar:
#   puppet apply --hiera_config hiera.yaml openstack-rabbitmq.pp
# with the keys of crowbar.openstack.config.rabbitmq_hiera in the Hiera data. Crowbar publishes
# the bus's host, port and user in the role's wall itself (crowbar/services/openstack.py).
include rabbitmq

$user = lookup('openstack::rabbitmq::user')
rabbitmq_user { $user:
  admin    => false,
  password => lookup('openstack::rabbitmq::password'),
  require  => Class['rabbitmq'],
}
rabbitmq_user_permissions { "${user}@/":
  configure_permission => '.*',
  read_permission      => '.*',
  write_permission     => '.*',
}

