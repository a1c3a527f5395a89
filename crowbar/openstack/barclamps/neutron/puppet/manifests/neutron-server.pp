# neutron-server: puppet-neutron's classes, unchanged, every parameter from Hiera (Crowbar's keys:
# crowbar.openstack.config.neutron_hiera). On Debian the server is neutron-api (uwsgi) and
# neutron-rpc-server; sync_db runs neutron-db-manage before they start. neutron::wsgi::uwsgi sets
# the API's uwsgi processes: Debian ships 8, each loading all of Neutron (lazy-apps), which under
# emulation takes minutes per process (docs/neutron.md).
include neutron
include neutron::config
include neutron::db
include neutron::plugins::ml2
include neutron::server
include neutron::wsgi::uwsgi
