"""How much a barclamp may hold: checked before anything is parsed or stored, on every way in (a
directory on the server, the files a client uploads, the built-in barclamps). docs/security.md
("Barclamps") explains them; the CLI (crowbar/cli/main.py) checks the same numbers before it sends
a barclamp, and tests/barclamps/test_hostile_barclamps.py keeps its copies equal to these.
"""

KIB, MIB = 1024, 1024 * 1024

MAX_YAML_BYTES = 256 * KIB      # barclamp.yml, checked before it is parsed
MAX_SCRIPT_BYTES = 1 * MIB      # each file under scripts/
MAX_FILES = 500                 # barclamp.yml and everything under scripts/ (directories count too)
MAX_TOTAL_BYTES = 4 * MIB       # all files together
# The JSON body of POST /api/v2/barclamps: the files (at most MAX_TOTAL_BYTES of UTF-8 text) plus
# JSON's escaping (a newline or quote is two bytes, a control character six). Refused with 413
# before the rest of the body is read.
MAX_UPLOAD_BODY = 16 * MIB

MAX_YAML_DEPTH = 64             # nested collections in barclamp.yml
# barclamp.yml as it would be once every alias is replaced by what it repeats: one unit per value
# plus one per character of text. A 256 KiB file without aliases stays far below it; an alias bomb
# ("billion laughs") is refused while it is composed, before anything is expanded.
MAX_YAML_EXPANDED = 1_000_000

MAX_NAME = 128                  # barclamp, role and attrib names (the database columns' size)
MAX_VERSION = 32
MAX_SCRIPT_NAME = 100           # bytes: what a plain tar header holds (the agent's busybox tar)
MAX_SOURCE = 4096               # the client's directory, stored as source_path
