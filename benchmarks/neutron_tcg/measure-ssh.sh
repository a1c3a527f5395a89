#!/bin/sh
# Feasibility under TCG (issue 16): how long the message bus, the database and neutron-server take
# to start and answer GET /v2.0/networks with auth_strategy = noauth. Prints @@ lines on the console.
exec 2>&1
t0=$(cut -d' ' -f1 /proc/uptime)
now() { awk -v t0="$t0" '{printf "%.1f", $1 - t0}' /proc/uptime; }
mark() { echo "@@ $(now) uptime=$(cut -d' ' -f1 /proc/uptime) $*"; }
mark start mem_total_mb=$(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) cpus=$(nproc)
systemctl is-enabled mariadb rabbitmq-server neutron-api neutron-rpc-server neutron-linuxbridge-agent 2>&1 | tr '\n' ' ' | sed 's/^/@@ enabled: /'; echo
mark mariadb-start; systemctl start mariadb; mark mariadb-active rc=$?
mysql -e "CREATE DATABASE neutron; CREATE USER 'neutron'@'localhost' IDENTIFIED BY 'pw'; GRANT ALL ON neutron.* TO 'neutron'@'localhost';"
mark mariadb-db-created rc=$?
mark rabbitmq-start; systemctl start rabbitmq-server; mark rabbitmq-active rc=$?
rabbitmqctl await_startup >/dev/null 2>&1; mark rabbitmq-ready rc=$?
cat > /etc/neutron/neutron.conf <<'CONF'
[DEFAULT]
core_plugin = ml2
service_plugins = router
auth_strategy = noauth
transport_url = rabbit://guest:guest@127.0.0.1:5672/
state_path = /var/lib/neutron
api_workers = 1
rpc_workers = 1
rpc_state_report_workers = 1
[database]
connection = mysql+pymysql://neutron:pw@localhost/neutron
[oslo_concurrency]
lock_path = /var/lib/neutron/lock
[agent]
root_helper = sudo neutron-rootwrap /etc/neutron/rootwrap.conf
CONF
cat > /etc/neutron/plugins/ml2/ml2_conf.ini <<'CONF'
[ml2]
type_drivers = flat,vlan,vxlan
tenant_network_types = vlan
mechanism_drivers = linuxbridge
[ml2_type_vlan]
network_vlan_ranges = physnet1:500:2500
CONF
mark db-sync-start
su -s /bin/sh neutron -c "neutron-db-manage --config-file /etc/neutron/neutron.conf --config-file /etc/neutron/plugins/ml2/ml2_conf.ini upgrade heads" > /var/log/db-sync.log 2>&1
mark db-sync-done rc=$?
tail -3 /var/log/db-sync.log
mark neutron-start; systemctl start neutron-api neutron-rpc-server; mark neutron-units-started rc=$?
i=0
while [ $i -lt 900 ]; do
  code=$(curl -s -o /tmp/nets.json -w '%{http_code}' http://127.0.0.1:9696/v2.0/networks)
  [ "$code" = 200 ] && break
  sleep 1; i=$((i+1))
done
mark neutron-api-answers code=$code body=$(head -c 200 /tmp/nets.json)
t=$(awk '{print $1}' /proc/uptime)
code=$(curl -s -o /tmp/net.json -w '%{http_code}' -H 'Content-Type: application/json' -X POST \
  -d '{"network": {"name": "blue", "tenant_id": "demo"}}' http://127.0.0.1:9696/v2.0/networks)
mark create-network code=$code body=$(head -c 400 /tmp/net.json)
free -m | sed 's/^/@@ free: /'
ps -eo rss,comm --sort=-rss | head -12 | sed 's/^/@@ rss: /'
systemctl --failed --no-legend | sed 's/^/@@ failed: /'
systemd-analyze 2>/dev/null | sed 's/^/@@ /'
journalctl -u neutron-api -u neutron-rpc-server --no-pager | tail -15 | sed 's/^/@@ log: /'
ls /var/log/neutron/ | sed 's/^/@@ logs: /'
tail -5 /var/log/neutron/neutron-api.log 2>/dev/null | sed 's/^/@@ api: /'
mark done
sync
