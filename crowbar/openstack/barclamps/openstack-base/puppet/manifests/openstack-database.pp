# The database: puppetlabs-mysql's server class (Debian's MariaDB; the package and service names
# come from Hiera) and one database with its user, reachable from the admin network. Outside
# Crowbar: the keys of crowbar.openstack.config.database_hiera in the Hiera data.
include mysql::server

mysql::db { lookup('openstack::database::name'):
  user     => lookup('openstack::database::user'),
  password => lookup('openstack::database::password'),
  host     => '%',
  grant    => ['ALL'],
}

