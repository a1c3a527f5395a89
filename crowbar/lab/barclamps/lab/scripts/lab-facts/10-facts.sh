#!/bin/sh
# lab-facts: facts only the machine itself can know, read on it and written to $CROWBAR_WALL:
#   {"lab": {"kernel": "6.1.0-28-amd64", "hostname": "discovery", "nic": "eth0",
#            "mac": "52:54:00:cb:1a:10", "ipv4": ["192.168.124.81/24"],
#            "interfaces": [{"name": "eth0", "mac": "...", "ipv4": ["192.168.124.81/24"]}]}}
# "mac" is the first NIC's (physical NICs in name order, from /sys/class/net/*/address). On an
# installed system also "os" (PRETTY_NAME of /etc/os-release) and "root" (the device mounted on /);
# the discovery image has neither ("os" is "", "root" is "rootfs").
# Runs under busybox sh: sed, awk and ip are all busybox's.
set -e

str() {  # a JSON string
    printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037')"
}

list() {  # a JSON array of strings, from words
    out="" sep=""
    for w in "$@"; do out="$out$sep$(str "$w")"; sep=", "; done
    printf '[%s]' "$out"
}

ipv4_of() {  # address/prefix of every IPv4 address, of one interface or of all but lo
    ip -4 addr show ${1:+dev "$1"} 2>/dev/null | awk '
        /^[0-9]+:/ { dev = $2; sub(/:$/, "", dev); sub(/@.*/, "", dev) }
        $1 == "inet" && dev != "lo" { print $2 }'
}

kernel=$(uname -r)
host=$(hostname)
os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)
root=$(awk '$2 == "/" { dev = $1 } END { print dev }' /proc/mounts)
first="" mac="" interfaces="" sep=""
for d in /sys/class/net/*; do
    [ -e "$d/device" ] || continue           # physical NICs only: no lo, bridges, bonds, VLANs
    name=${d##*/}
    addr=$(cat "$d/address")
    [ -n "$first" ] || { first=$name; mac=$addr; }
    interfaces="$interfaces$sep{\"name\": $(str "$name"), \"mac\": $(str "$addr"), \"ipv4\": $(list $(ipv4_of "$name"))}"
    sep=", "
done

cat > "$CROWBAR_WALL" <<JSON
{"lab": {"kernel": $(str "$kernel"), "hostname": $(str "$host"), "os": $(str "$os"), "root": $(str "$root"),
 "nic": $(str "$first"), "mac": $(str "$mac"),
 "ipv4": $(list $(ipv4_of)), "interfaces": [$interfaces]}}
JSON
echo "lab-facts: kernel $kernel, host $host, os ${os:-none}, root $root, $first $mac, IPv4 $(ipv4_of | tr '\n' ' ')"
