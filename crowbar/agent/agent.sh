#!/bin/sh
# The discovery agent: gets an address, posts the inventory, then does what the server says.
# The protocol is documented in crowbar/agent/__init__.py. Runs under busybox sh; /init restarts
# it should it ever exit. Sourced (`. agent.sh`, $0 is then the shell), it only defines functions.

LIB=${CROWBAR_LIB:-/usr/lib/crowbar}
STATE=${CROWBAR_STATE:-/run/crowbar}
mkdir -p "$STATE"

log() { echo "crowbar-agent: $*"; }
jget() { awk -v mode=get -v key="$1" -f "$LIB/json.awk" < "$2"; }

# busybox wget has no timeout of its own; 60 s covers a server that holds /next for up to WAIT s.
# Its error message ("server returned error: HTTP/1.1 409 Conflict") goes to $STATE/http.err,
# where http_status finds the HTTP status of the last failed request.
http() { timeout 60 wget -q -O "$@" 2> "$STATE/http.err"; }
http_status() { sed -n 's/.*server returned error: HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$STATE/http.err" | head -n 1; }

# Booting again is how the machine gets a fresh boot script (and nonce) from the server.
restart_machine() { sync; reboot -f; }

cmdline_arg() {
    for word in $(cat "${CROWBAR_CMDLINE:-/proc/cmdline}"); do
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

# Posts the inventory until the server answers with a node name and token. A machine the server
# knows proves this boot with the one-time nonce its boot script put on the kernel command line
# (crowbar.nonce=). Refusals (403, 409: the nonce is spent or expired, or the node no longer boots
# discovery) are not solved by asking again: after three in a row the machine boots again, which
# fetches a fresh boot script. Too many new machines at once (429): wait longer.
post_inventory() {
    if [ -n "$NONCE" ]; then
        http "$STATE/registration.json" --header "Content-Type: application/json" \
            --header "X-Crowbar-Nonce: $NONCE" --post-file "$STATE/inventory.json" "$URL/api/v2/discovery"
    else
        http "$STATE/registration.json" --header "Content-Type: application/json" \
            --post-file "$STATE/inventory.json" "$URL/api/v2/discovery"
    fi
}

register() {
    sh "$LIB/inventory.sh" "$(cat "$STATE/boot_nic")" > "$STATE/inventory.json"
    refused=0
    while :; do
        if post_inventory; then
            NODE=$(jget node "$STATE/registration.json")
            TOKEN=$(jget token "$STATE/registration.json")
            [ -n "$TOKEN" ] && { log "discovered as $NODE"; return; }
            log "discovery answer has no token"
            sleep 5
            continue
        fi
        status=$(http_status)
        case $status in
        403 | 409)
            refused=$((refused + 1))
            log "the server refused this boot's discovery (HTTP $status, $refused times)"
            if [ $refused -ge 3 ]; then
                log "booting again for a fresh boot script"
                restart_machine
                return 1
            fi
            sleep 5
            ;;
        429) refused=0; log "the server takes no new machines right now (HTTP 429)"; sleep $((20 + RANDOM % 20)) ;;
        "") refused=0; log "could not post the inventory to $URL"; sleep 5 ;;
        *) refused=0; log "discovery failed (HTTP $status)"; sleep 5 ;;
        esac
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
        export CROWBAR_URL="$URL" CROWBAR_NODE="$NODE" CROWBAR_TOKEN="$TOKEN" CROWBAR_JOB="$job"
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
        --header "Content-Type: application/json" --header "Prefer: next-action" \
        --post-file "$STATE/result.json" "$URL/api/v2/agent/jobs/$job"; do
        tries=$((tries + 1))
        [ $tries -ge 5 ] && { log "could not report job $job"; return; }
        sleep 5
    done
    log "job $job exited with $code"
    # the answer is the next instruction (Prefer: next-action): follow takes it instead of a poll
    case $(jget action "$STATE/result.answer") in
    run | reboot | poweroff) cp "$STATE/result.answer" "$STATE/then.json" ;;
    esac
}

# Asks for the next action until the server no longer knows the token (401: the node was
# deleted, or its token replaced); then the caller registers again. Any other failure (the server
# restarting, unreachable) is retried with the same token. A long poll: the server may hold the
# request up to WAIT seconds and answers as soon as there is something to do.
WAIT=${CROWBAR_WAIT:-50}
follow() {
    failures=0
    rm -f "$STATE/then.json"
    while :; do
        if [ -f "$STATE/then.json" ]; then  # a job result's answer: the next instruction already
            mv "$STATE/then.json" "$STATE/next.json"
        elif ! http "$STATE/next.json" --header "Authorization: Bearer $TOKEN" --header "Prefer: wait=$WAIT" \
            "$URL/api/v2/agent/next"; then
            [ "$(http_status)" = 401 ] && break
            failures=$((failures + 1))
            [ $((failures % 12)) -eq 1 ] && log "no answer from $URL ($failures times), trying again"
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
        reboot) log "rebooting"; restart_machine ;;
        poweroff) log "powering off"; sync; poweroff -f ;;
        *) log "unknown action '$action'"; sleep 5 ;;
        esac
    done
    log "the server no longer knows this node's token, registering again"
}

main() {
    URL=$(cmdline_arg crowbar.url)
    URL=${URL%/}
    NONCE=$(cmdline_arg crowbar.nonce)
    if [ -z "$URL" ]; then
        log "no crowbar.url= on the kernel command line; nothing to do"
        exec sleep 2147483647
    fi
    network_up
    while :; do
        register || continue
        follow
    done
}

case $0 in */agent.sh | agent.sh) main ;; esac
