#!/bin/sh
t0=$(cut -d" " -f1 /proc/uptime)
now() { awk -v t0="$t0" '{printf "%.1f", $1 - t0}' /proc/uptime; }
systemctl restart neutron-api; echo "@@ $(now) neutron-api restarted (1 process) rc=$?"
i=0
while [ $i -lt 900 ]; do
  code=$(curl -s -m 30 -o /tmp/nets.json -w "%{http_code}" http://127.0.0.1:9696/v2.0/networks)
  [ "$code" = 200 ] && break
  sleep 1; i=$((i+1))
done
echo "@@ $(now) GET /v2.0/networks $code $(head -c 200 /tmp/nets.json)"
code=$(curl -s -o /tmp/net.json -w "%{http_code}" -H "Content-Type: application/json" -X POST -d '{"network": {"name": "blue", "tenant_id": "demo"}}' http://127.0.0.1:9696/v2.0/networks)
echo "@@ $(now) POST /v2.0/networks $code $(head -c 600 /tmp/net.json)"
code=$(curl -s -o /tmp/agents.json -w "%{http_code}" http://127.0.0.1:9696/v2.0/agents)
echo "@@ $(now) GET /v2.0/agents $code $(head -c 300 /tmp/agents.json)"
free -m | sed "s/^/@@ free: /"
ps -eo rss,time,comm --sort=-rss | head -8 | sed "s/^/@@ rss: /"
