#!/bin/sh
# The discovery agent: gets an address, posts the inventory, then does what the server says.
# The protocol is documented in crowbar/agent/__init__.py. Runs under busybox sh; /init restarts
# it should it ever exit.

LIB=/usr/lib/crowbar
STATE=/run/crowbar
mkdir -p "$STATE"

log() { echo "crowbar-agent: $*"; }
jget() { awk -v mode=get -v key="$1" -f "$LIB/json.awk" < "$2"; }

# busybox wget has no timeout of its own; 60 s covers a server that holds /next for up to 30 s.
http() { timeout 60 wget -q -O "$@"; }

cmdline_arg() {
    for word in $(cat /proc/cmdline); do
        case $word in "$1="*) echo "${word#*=}"; return ;; esac
    done
}

nics() {
    for d in /sys/class/net/*; do [ -e "$d/device" ] && echo "${d##*/}"; done
}

has_link() {
    for n in $(nics); do [ "$(cat "/sys/class/net/$n/carrier" 2>/dev/null)" = 1 ] && return 0; done
    return 1
}

# DHCP on the first NIC with link that gets a lease; udhcpc then stays in the background to renew.
network_up() {
    if [ -s "$STATE/boot_nic" ] && kill -0 "$(cat "$STATE/udhcpc.pid" 2>/dev/null)" 2>/dev/null; then
        return
    fi
    ip link set lo up
    for n in $(nics); do ip link set "$n" up; done
    while :; do
        waited=0
        while [ $waited -lt 10 ] && ! has_link; do
            sleep 1; waited=$((waited + 1))
        done
        for n in $(nics); do
            [ "$(cat "/sys/class/net/$n/carrier" 2>/dev/null)" = 1 ] || continue
            log "DHCP on $n"
            if udhcpc -i "$n" -n -t 5 -T 2 -p "$STATE/udhcpc.pid" -s /etc/udhcpc/default.script; then
                echo "$n" > "$STATE/boot_nic"
                return
            fi
        done
        log "no DHCP lease on any NIC with link, trying again"
        sleep 5
    done
}

# Posts the inventory until the server answers with a node name and token.
register() {
    sh "$LIB/inventory.sh" "$(cat "$STATE/boot_nic")" > "$STATE/inventory.json"
    while :; do
        if http "$STATE/registration.json" --header "Content-Type: application/json" \
            --post-file "$STATE/inventory.json" "$URL/api/v2/discovery"; then
            NODE=$(jget node "$STATE/registration.json")
            TOKEN=$(jget token "$STATE/registration.json")
            [ -n "$TOKEN" ] && { log "discovered as $NODE"; return; }
            log "discovery answer has no token"
        else
            log "could not post the inventory to $URL"
        fi
        sleep 5
    done
}

# Runs the job in $STATE/next.json with sh and posts its exit code and output.
run_job() {
    job=$(jget job "$STATE/next.json")
    case $job in "" | *[!A-Za-z0-9._-]*) log "refusing job with id '$job'"; sleep 5; return ;; esac
    limit=$(jget timeout "$STATE/next.json")
    jget script "$STATE/next.json" > "$STATE/job.sh"
    log "running job $job"
    (
        cd /tmp || exit 1
        export CROWBAR_URL="$URL" CROWBAR_NODE="$NODE"
        case $limit in
        "" | *[!0-9]*) sh "$STATE/job.sh" ;;
        *) timeout "$limit" sh "$STATE/job.sh" ;;
        esac
    ) < /dev/null > "$STATE/job.out" 2>&1
    code=$?
    {
        printf '{"exit_code": %d, "output": ' "$code"
        tail -c 262144 "$STATE/job.out" | awk -v mode=string -f "$LIB/json.awk"
        printf '}'
    } > "$STATE/result.json"
    tries=0
    until http "$STATE/result.answer" --header "Authorization: Bearer $TOKEN" \
        --header "Content-Type: application/json" --post-file "$STATE/result.json" \
        "$URL/api/v2/agent/jobs/$job"; do
        tries=$((tries + 1))
        [ $tries -ge 5 ] && { log "could not report job $job"; return; }
        sleep 5
    done
    log "job $job exited with $code"
}

# Asks for the next action until the server stops answering; then the caller registers again
# (the node may have been deleted, or its token replaced).
follow() {
    failures=0
    while [ $failures -lt 3 ]; do
        if ! http "$STATE/next.json" --header "Authorization: Bearer $TOKEN" "$URL/api/v2/agent/next"; then
            failures=$((failures + 1))
            sleep 5
            continue
        fi
        failures=0
        action=$(jget action "$STATE/next.json")
        case $action in
        wait)
            seconds=$(jget seconds "$STATE/next.json")
            case $seconds in "" | *[!0-9]*) seconds=5 ;; esac
            sleep "$seconds"
            ;;
        run) run_job ;;
        reboot) log "rebooting"; sync; reboot -f ;;
        poweroff) log "powering off"; sync; poweroff -f ;;
        *) log "unknown action '$action'"; sleep 5 ;;
        esac
    done
    log "lost the server, registering again"
}

URL=$(cmdline_arg crowbar.url)
URL=${URL%/}
if [ -z "$URL" ]; then
    log "no crowbar.url= on the kernel command line; nothing to do"
    exec sleep 2147483647
fi
network_up
while :; do
    register
    follow
done
