#!/bin/sh
# lab-vlan: configures the VLAN subinterface that attrib lab-vlan (lab/vlan) describes, pings the
# peer's address over it and writes what the kernel shows to $CROWBAR_WALL:
#   {"lab": {"vlan_probe": {"name": "eth0.200", "parent": "eth0", "vlan": 200,
#     "vlan_config": "<cat /proc/net/vlan/config>", "vlan_device": "<cat /proc/net/vlan/eth0.200>",
#     "link": "<ip link show eth0.200>", "ipv4": ["192.168.125.10/24"],
#     "peer": "192.168.125.11", "peer_answered": true, "ping_attempts": 3, "ping_seconds": 4,
#     "arp_answered": true, "untagged_arp_answered": true,
#     "control": {"vlan": 201, "device": "ctl201", "answered": false, "output": "..."}}}}
# The negative control (with control_vlan): a second VLAN device on the same parent with another
# VLAN id and no address of its own asks, by ARP with the same source address, for the peer's
# address. A peer without a device on that VLAN never sees the request (arp_answered shows that the
# same ARP request over the real VLAN is answered). The control device is removed afterwards.
# untagged_arp_answered: the same request untagged on the parent (informative: see below).
#
# Exits 0 once the subinterface is configured, whether or not the peer answered: the wall says.
# Runs under busybox sh in the discovery image, whose json.awk reads the attrs and whose /init has
# loaded 8021q (loaded here with insmod otherwise).

JSON_AWK=${CROWBAR_JSON_AWK:-/usr/lib/crowbar/json.awk}

die() {
    echo "lab-vlan: $*" >&2
    exit 1
}

get() {  # the value of key $1 of the JSON object on stdin (strings decoded, objects as JSON)
    awk -v mode=get -v key="$1" -f "$JSON_AWK"
}

str() {  # stdin as one JSON string (every line ending in \n)
    awk -v mode=string -f "$JSON_AWK"
}

[ -r "$JSON_AWK" ] || die "$JSON_AWK is missing: this role runs on the discovery image"
cfg=$(get lab < "$CROWBAR_ATTRS" | get vlan) || die "attrib lab-vlan (lab/vlan) is not set on this node"
field() {
    printf '%s\n' "$cfg" | get "$1"
}
name=$(field name) parent=$(field parent) vlan=$(field vlan) address=$(field address) peer=$(field peer)
control_vlan=$(field control_vlan) wait=$(field wait)
[ -n "$name" ] && [ -n "$parent" ] && [ -n "$address" ] && [ -n "$peer" ] || die "lab/vlan lacks a field: $cfg"
for v in "$name" "$parent" "$address" "$peer"; do  # they go into the wall as they are
    case $v in *[!A-Za-z0-9_./-]*) die "lab/vlan: '$v' has characters an interface or address has not" ;; esac
done
case $vlan in '' | *[!0-9]*) die "lab/vlan: vlan must be a number, not '$vlan'" ;; esac
case $control_vlan in *[!0-9]*) die "lab/vlan: control_vlan must be a number, not '$control_vlan'" ;; esac
case $wait in '') wait=40 ;; *[!0-9]*) die "lab/vlan: wait must be a number of seconds" ;; esac
[ -d "/sys/class/net/$parent" ] || die "no interface $parent here (plan says $name on $parent)"

# 8021q: /init loads it on the discovery image; otherwise modprobe, or insmod from the image's list.
if [ ! -e /proc/net/vlan/config ]; then
    modprobe 8021q 2>/dev/null || {
        ko=$(grep '/8021q\.ko$' /etc/crowbar/modules 2>/dev/null | head -n 1)
        [ -n "$ko" ] && insmod "$ko"
    }
fi
[ -e /proc/net/vlan/config ] || die "the 8021q module is not loaded and could not be"

vlan_link() {  # name parent id: (re)create the VLAN device and bring it up
    ip link del "$1" 2>/dev/null
    ip link add link "$2" name "$1" type vlan id "$3" || die "ip link add link $2 name $1 type vlan id $3 failed"
    ip link set "$1" up || die "cannot bring $1 up"
}

ip link set "$parent" up || die "cannot bring $parent up"
vlan_link "$name" "$parent" "$vlan"
ip addr add "$address" dev "$name" || die "cannot add $address to $name"
echo "lab-vlan: $name (VLAN $vlan on $parent) has $address; pinging $peer for up to ${wait}s"

# The peer may configure its side later: ping until it answers or `wait` runs out.
started=$(date +%s)
deadline=$((started + wait))
answered=false attempts=0 output=""
while :; do
    attempts=$((attempts + 1))
    t=$(date +%s)
    if output=$(ping -c 1 -W 1 -I "$name" "$peer" 2>&1); then
        answered=true
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || break
    [ "$(date +%s)" -gt "$t" ] || sleep 1  # an immediate error (no ARP answer yet) must not spin
done
seconds=$(($(date +%s) - started))
echo "lab-vlan: $peer answered: $answered (attempt $attempts, ${seconds}s)"

# The same ARP request as the control's, over the real VLAN: answered when the peer is there.
arp_answered=false
arping -I "$name" -s "${address%/*}" -c 2 -w 3 "$peer" >/dev/null 2>&1 && arp_answered=true
# And untagged, on the parent: recorded only. Linux answers ARP for any of its addresses on any of
# its interfaces (arp_ignore=0), so the peer may well answer here: only the tag keeps VLANs apart.
untagged_arp_answered=false
arping -I "$parent" -s "${address%/*}" -c 2 -w 3 "$peer" >/dev/null 2>&1 && untagged_arp_answered=true

control=null
if [ -n "$control_vlan" ]; then
    cdev="ctl$control_vlan"
    vlan_link "$cdev" "$parent" "$control_vlan"
    if coutput=$(arping -I "$cdev" -s "${address%/*}" -c 3 -w 4 "$peer" 2>&1); then
        canswered=true
    else
        canswered=false
    fi
    ip link del "$cdev"
    echo "lab-vlan: control: ARP for $peer on VLAN $control_vlan ($cdev) answered: $canswered"
    control="{\"vlan\": $control_vlan, \"device\": \"$cdev\", \"answered\": $canswered,
  \"output\": $(printf '%s\n' "$coutput" | str)}"
fi

addresses=$(ip -4 addr show dev "$name" | awk '$1 == "inet" { printf "%s\"%s\"", sep, $2; sep = ", " }')
cat > "$CROWBAR_WALL" <<JSON
{"lab": {"vlan_probe": {"name": "$name", "parent": "$parent",
 "vlan": $vlan, "vlan_config": $(str < /proc/net/vlan/config),
 "vlan_device": $(str < "/proc/net/vlan/$name"), "link": $(ip link show "$name" | str),
 "ipv4": [$addresses], "peer": "$peer", "peer_answered": $answered,
 "ping_attempts": $attempts, "ping_seconds": $seconds, "ping_output": $(printf '%s\n' "$output" | str),
 "arp_answered": $arp_answered, "untagged_arp_answered": $untagged_arp_answered, "control": $control}}}
JSON
cat /proc/net/vlan/config
