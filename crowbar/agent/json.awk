# JSON for the discovery agent, which has busybox awk but no JSON tool. Three modes:
#   awk -v mode=inventory -v lists="disks nics" -f json.awk < records   build the inventory object
#   awk -v mode=get -v key=NAME -f json.awk < document    print one top-level value, decoded
#   awk -v mode=string -f json.awk < text                  print the text as one JSON string
#
# Inventory records are lines "group<TAB>item<TAB>key<TAB>type<TAB>value" (the value may hold
# tabs). Group "." holds top-level keys; item "-" makes the group an object; any other item is
# one object of the list named by the group, in order of first appearance. Types: s string
# (trimmed; empty is null), n non-negative integer (anything else is null), b boolean (1 true,
# 0 false, else null). Groups named in `lists` are lists even when they have no records.
#
# busybox awk is byte-oriented: bytes >= 0x80 pass through untouched, so UTF-8 stays UTF-8.

BEGIN {
    FS = "\t"
    for (i = 1; i < 32; i++) CTL[sprintf("%c", i)] = sprintf("\\u%04x", i)
    CTL["\n"] = "\\n"; CTL["\t"] = "\\t"; CTL["\r"] = "\\r"; CTL["\""] = "\\\""; CTL["\\"] = "\\\\"
    CTL[sprintf("%c", 127)] = "\\u007f"
    if (mode == "inventory") {
        nlists = split(lists, list_names, " ")
        for (i = 1; i <= nlists; i++) is_list[list_names[i]] = 1
    } else if (mode == "string") {
        printf "\""
    }
}

# The characters of s escaped for a JSON string, without the quotes.
function esc(s,    out) {
    out = ""
    while (match(s, /["\\[:cntrl:]]/)) {
        out = out substr(s, 1, RSTART - 1) CTL[substr(s, RSTART, 1)]
        s = substr(s, RSTART + 1)
    }
    return out s
}

function add_group(g) {
    if (!(g in seen_group)) { seen_group[g] = 1; groups[++ngroups] = g }
}

function record(line,    g, item, key, type, value, rest, k, slot) {
    g = $1; item = $2; key = $3; type = $4
    rest = line
    for (k = 1; k <= 4; k++) rest = substr(rest, index(rest, "\t") + 1)
    value = (NF >= 5) ? rest : ""
    if (type == "s") {
        gsub(/^[ \t]+|[ \t]+$/, "", value)
        value = (value == "") ? "null" : "\"" esc(value) "\""
    } else if (type == "n") {
        value = (value ~ /^[0-9]+$/) ? value : "null"
    } else if (type == "b") {
        value = (value == "1") ? "true" : (value == "0") ? "false" : "null"
    } else {
        value = "null"
    }
    add_group(g)
    if (item != "-" && g != ".") {
        is_list[g] = 1
        if (!((g, item) in seen_item)) { seen_item[g, item] = 1; items[g] = items[g] SUBSEP item }
    }
    slot = g SUBSEP item
    if (!((slot, key) in val)) keys[slot] = keys[slot] SUBSEP key
    val[slot, key] = value
}

# The members of slot (a group and item) as "key": value pairs.
function members(slot,    ks, n, i, out) {
    n = split(substr(keys[slot], 2), ks, SUBSEP)
    out = ""
    for (i = 1; i <= n; i++) out = out (i > 1 ? ", " : "") "\"" esc(ks[i]) "\": " val[slot, ks[i]]
    return out
}

function inventory(    i, g, n, its, j, out, sep) {
    for (i = 1; i <= nlists; i++) add_group(list_names[i])
    out = "{"; sep = ""
    for (i = 1; i <= ngroups; i++) {
        g = groups[i]
        if (g == ".") {
            if (keys[g SUBSEP "-"] != "") { out = out sep members(g SUBSEP "-"); sep = ", " }
            continue
        }
        out = out sep "\"" esc(g) "\": "; sep = ", "
        if (is_list[g]) {
            n = split(substr(items[g], 2), its, SUBSEP)
            out = out "["
            for (j = 1; j <= n; j++) out = out (j > 1 ? ", " : "") "{" members(g SUBSEP its[j]) "}"
            out = out "]"
        } else {
            out = out "{" members(g SUBSEP "-") "}"
        }
    }
    print out "}"
}

# --- reading JSON: a cursor P over DOC (the whole input) ---

function skip_ws() {
    while (P <= N && index(" \t\r\n", substr(DOC, P, 1))) P++
}

function hex(s,    i, v) {
    v = 0
    for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", tolower(substr(s, i, 1))) - 1
    return v
}

function utf8(cp) {
    if (cp < 128) return cp ? sprintf("%c", cp) : ""
    if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
    if (cp < 65536) return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
    return sprintf("%c%c%c%c", 240 + int(cp / 262144), 128 + int(cp / 4096) % 64,
                   128 + int(cp / 64) % 64, 128 + cp % 64)
}

# The string starting at P (on its opening quote), decoded; leaves P after the closing quote.
function read_string(    out, rest, c, cp, low) {
    P++; out = ""
    while (P <= N) {
        rest = substr(DOC, P)
        if (!match(rest, /["\\]/)) { P = N + 1; break }
        out = out substr(rest, 1, RSTART - 1)
        P += RSTART
        if (substr(rest, RSTART, 1) == "\"") break
        c = substr(DOC, P, 1); P++
        if (c == "n") out = out "\n"
        else if (c == "t") out = out "\t"
        else if (c == "r") out = out "\r"
        else if (c == "b") out = out sprintf("%c", 8)
        else if (c == "f") out = out sprintf("%c", 12)
        else if (c == "u") {
            cp = hex(substr(DOC, P, 4)); P += 4
            if (cp >= 55296 && cp < 56320 && substr(DOC, P, 2) == "\\u") {
                low = hex(substr(DOC, P + 2, 4))
                if (low >= 56320 && low < 57344) { cp = 65536 + (cp - 55296) * 1024 + (low - 56320); P += 6 }
            }
            out = out utf8(cp)
        } else out = out c
    }
    return out
}

# The value at P: strings decoded, null as "", anything else as its JSON text; leaves P after it.
function read_value(    c, start, depth) {
    c = substr(DOC, P, 1)
    if (c == "\"") return read_string()
    start = P
    if (c == "{" || c == "[") {
        depth = 0
        while (P <= N) {
            c = substr(DOC, P, 1)
            if (c == "\"") { read_string(); continue }
            P++
            if (c == "{" || c == "[") depth++
            else if ((c == "}" || c == "]") && --depth == 0) break
        }
        return substr(DOC, start, P - start)
    }
    while (P <= N && !index(",}] \t\r\n", substr(DOC, P, 1))) P++
    c = substr(DOC, start, P - start)
    return (c == "null") ? "" : c
}

# Prints the decoded value of `key` in the object DOC; exits 1 when it is absent or DOC is no object.
function get(key,    name, value) {
    N = length(DOC); P = 1
    skip_ws()
    if (substr(DOC, P, 1) != "{") exit 1
    P++
    while (P <= N) {
        skip_ws()
        if (substr(DOC, P, 1) != "\"") exit 1
        name = read_string()
        skip_ws()
        if (substr(DOC, P, 1) != ":") exit 1
        P++; skip_ws()
        value = read_value()
        if (name == key) { printf "%s", value; exit 0 }
        skip_ws()
        if (substr(DOC, P, 1) != ",") exit 1
        P++
    }
    exit 1
}

mode == "inventory" { record($0); next }
mode == "string" { printf "%s\\n", esc($0); next }
{ DOC = DOC $0 "\n" }

END {
    if (mode == "inventory") inventory()
    else if (mode == "string") printf "\""
    else if (mode == "get") get(key)
}
