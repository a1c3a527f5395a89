"""A simulated fleet: N machines, each an asyncio client speaking the discovery agent's protocol.

`crowbar lab simulate` and benchmarks/fleet.py drive a real Crowbar server with it, through the
same HTTP calls real machines and a real operator make, and nothing else (no database access):

    discover   every machine PXE-boots: GET /boot/<mac>.ipxe (an unknown MAC gets the discovery
               image), POST /api/v2/discovery with a realistic inventory (unique MACs), then polls
               GET /api/v2/agent/next with its node token and `Prefer: wait=50` (the long poll: the
               server holds it until there is work or the hold ends), sleeping the `seconds` each
               wait answer carries (the server chooses them, as for the real agent:
               crowbar/agent/__init__.py)
    enroll     the operator gives every node the `fake` power driver (PUT /nodes/power, 250 a call)
    allocate   POST /nodes/allocate, in batches (one transaction each); a node told to reboot boots
               the discovery image again and proves the boot with the nonce from its boot script
    deploy     POST /nodes/deploy, in batches; each machine takes its install job, "installs" for
               --install-delay seconds, reporting its phases and bytes at the pace the server
               answers (as the install script does), posts the job result; told to reboot it
               boots its disk (its boot script says so) and its installed system calls home
               (POST /api/v2/agent/booted: ready with its SSH host keys, one post, as
               crowbar-callhome does when sshd answers at once)
    anneal     a barclamp of noop roles, a deployment binding them to every node, committed and
               annealed until every noderole is active (GET /anneal)

Each phase reports how long it took, nodes per second, and the latency of every request by route
(p50/p95/p99), plus what the caller can measure on the server: CPU seconds and peak RSS when it is
a child process (`ServerProcess`), the database's size (`db_size`). A held poll's latency is what
it took beyond the hold the server chose (`Server-Timing: hold;dur=MS, late;dur=MS`: the hold, less
what of it was past its end), which is the agent's wait for work, not the server's cost;
`DELIVERY` is the time from the operator's call that queues a machine's work (allocate's reboot,
deploy's install job) being sent to its agent taking it: it includes the call itself, since an agent
woken by the call's commit often takes its work before the call's answer is back.

The machines speak HTTP through aiohttp (its parser is C), not httpx: the simulator shares the
machine with the server it measures, and httpx cost 4.2-5.5 ms of this process's CPU per request
where aiohttp costs 0.5 (3,000 GETs, 32 in flight, 2026-12-04): with httpx a 1,000-machine run
spent more CPU in the simulator than in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

# The roles the anneal phase binds to every node: the noop jig, so what is measured is Crowbar.
FLEET_BARCLAMP = """\
barclamp: {name: fleet, description: "roles for the simulated fleet (noop jig)", version: "1.0"}
roles:
  - {name: fleet-base, jig: noop}
  - {name: fleet-service, jig: noop, requires: [fleet-base]}
  - {name: fleet-client, jig: noop, requires: [fleet-service]}
"""
FLEET_ROLES = ["fleet-base", "fleet-service", "fleet-client"]
DEPLOYMENT = "fleet"
BATCH = 10_000  # nodes per bulk enroll / allocate / deploy call, as the CLI sends them: all in one (the server's most)
ENROLL_BATCH = 5_000  # power settings per call at most (the request body's limit)
AGENT_RETRY = 5.0  # the agent's pause after a failed request (agent.sh)
HELD_PER_CLIENT = 50  # machines whose long polls share one HTTP client (a connection each)
KEEPALIVE = 2.0  # seconds an idle connection is kept for the next request (the server keeps it 5)
NONCE_RE = re.compile(r"crowbar\.nonce=([A-Za-z0-9_-]+)")
TIMING_RE = re.compile(r"(hold|late);dur=([0-9.]+)")
DELIVERY = "work queued -> taken"  # the route name under which work delivery latency is reported
# a well-formed ed25519 public key (not a real one): what the installed system posts with `ready`
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZsZWV0LXNpbXVsYXRlZC1ob3N0LWtleS0wMDAwMDAwMDA="


class FleetError(Exception):
    """The simulation could not go on: the message says which phase and why."""


# What a request may fail with: the connection (refused, reset, closed by the server) or a timeout.
HTTP_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass
class Answer:
    """An HTTP answer, read to the end (the connection goes back to its pool at once)."""
    status_code: int
    headers: dict
    text: str

    def json(self):
        return json.loads(self.text)


def server_hold(server_timing: str) -> tuple[float, float] | None:
    """What a held poll's Server-Timing says, in seconds: how long the server held it, and how much
    of that was past the end of the hold it chose (its own delay); None: a poll it did not hold."""
    timing = {name: float(ms) / 1000 for name, ms in TIMING_RE.findall(server_timing)}
    return (timing["hold"], timing.get("late", 0.0)) if "hold" in timing else None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[k]


@dataclass
class Phase:
    name: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    latencies: dict[str, list[float]] = field(default_factory=dict)  # "GET /route" -> seconds
    errors: dict[str, int] = field(default_factory=dict)  # "GET /route 503" -> count
    nodes: int = 0
    server: dict = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)  # how late the simulator's own event loop ran a timer

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def report(self) -> dict:
        routes = {}
        for route, values in sorted(self.latencies.items()):
            routes[route] = {"count": len(values), "p50_ms": round(percentile(values, 50) * 1000, 1),
                             "p95_ms": round(percentile(values, 95) * 1000, 1),
                             "p99_ms": round(percentile(values, 99) * 1000, 1)}
        seconds = self.seconds
        return {"phase": self.name, "seconds": round(seconds, 2), "nodes": self.nodes,
                "nodes_per_s": round(self.nodes / seconds, 1) if seconds > 0 else None,
                "requests": sum(len(v) for v in self.latencies.values()), "routes": routes,
                "errors": dict(sorted(self.errors.items())),
                "simulator_lag_p50_p99_ms": [round(percentile(self.lag, p) * 1000, 1) for p in (50, 99)],
                **self.server}


class ServerProcess:
    """CPU seconds and peak RSS of a server that is a child process of ours (Linux /proc)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return 0.0

    def reset_peak(self) -> None:
        """Start a new peak RSS (clear_refs 5), so that each phase has its own."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass


class ServerGroup:
    """Several servers' processes (one database) measured as one: their CPU seconds summed, the
    highest of their peak RSS."""

    def __init__(self, processes: list[ServerProcess]):
        self.processes = processes

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.processes)

    def peak_rss_mb(self) -> float:
        return max(p.peak_rss_mb() for p in self.processes)

    def reset_peak(self) -> None:
        for p in self.processes:
            p.reset_peak()


def inventory(index: int, macs: list[str]) -> dict:
    """What inventory.sh posts for a 2-socket rack server with two NICs, two disks and a BMC."""
    return {
        "kernel": "6.1.0-28-amd64", "firmware": "uefi" if index % 2 else "bios", "boot_mac": macs[0],
        "cpu": {"model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "count": 64},
        "memory": {"total_bytes": 270_000_000_000, "installed_bytes": 274_877_906_944},
        "disks": [{"name": "sda", "size_bytes": 480_103_981_056, "model": "SSDSC2KB480G8", "serial": f"SIM{index:08d}A",
                   "rotational": False, "removable": False},
                  {"name": "sdb", "size_bytes": 3_840_755_982_336, "model": "MZ7LH3T8HMLT", "serial": f"SIM{index:08d}B",
                   "rotational": False, "removable": False}],
        "nics": [{"name": f"eno{i + 1}", "mac": mac, "speed": 25000, "driver": "ice",
                  "bus": f"0000:3{i}:00.0", "link": True} for i, mac in enumerate(macs)],
        "dmi": {"vendor": "Simulated", "product": "Fleet Server F1", "serial": f"SIM{index:08d}"},
        "bmc": {"vendor": "Unknown (0xffff)", "manufacturer_id": 65535, "product_id": 1, "firmware": "1.00",
                "ipmi_version": "2.0", "channel": 1, "mac": _mac(index, 9), "address_source": "DHCP Address",
                "address": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "0.0.0.0", "vlan": None},
    }


def _mac(index: int, nic: int, prefix: int = 0) -> str:
    # 02:... is locally administered: no real NIC has it. `prefix` keeps two fleets apart.
    return "02:%02x:%02x:%02x:%02x:%02x" % (prefix & 0xFF, nic, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF)


@dataclass
class Machine:
    index: int
    macs: list[str]
    name: str | None = None
    token: str | None = None
    state: str = "off"  # off, discovery, installing, installed, ready
    installed: bool = False  # its disk holds an installed system (the install job ended well)
    boot_id: str = ""

    @property
    def script_name(self) -> str:
        return self.macs[0].replace(":", "-") + ".ipxe"


@dataclass
class Options:
    nodes: int
    concurrency: int = 64  # requests in flight at once, over the whole fleet
    install_delay: float = 5.0  # seconds an install job takes
    os_name: str | None = None  # what deploy installs (None: the server's choice)
    poll: float | None = None  # seconds between polls; None: what the server says (the real agent's way)
    timeout: float = 1800.0  # seconds any one phase may take
    mac_prefix: int = 0
    enroll_power: bool = True
    state_dir: str | None = None  # the fake power driver's state_dir, when the server is on this host
    admin_network: bool = True  # make the admin network big enough for the fleet (a /16) first
    allocate_on_deploy: bool = False  # one phase: deploy with allocate (no reboot after a separate allocate)
    phases: tuple[str, ...] = ("discover", "enroll", "allocate", "deploy", "anneal")  # and "idle"
    idle_seconds: float = 60.0  # how long the idle phase lets the agents poll
    long_poll: int = 50  # the agents' `Prefer: wait=` (as the real agent's); 0: plain polls
    batch: int = BATCH  # nodes per bulk call (enroll, allocate, deploy): each is one transaction
    # the servers the machines talk to, machine i to the (i mod n)th: several servers on one
    # PostgreSQL (the operator's calls go to the Fleet's own URL); empty: that URL alone
    agent_urls: tuple[str, ...] = ()


class Fleet:
    """The machines and the operator; `run()` goes through the phases and returns the report."""

    def __init__(self, url: str, token: str, options: Options, *, say: Callable[[str], None] = lambda _: None,
                 server: ServerProcess | None = None, db_size: Callable[[], int | None] | None = None):
        self.url = url.rstrip("/")
        self.agent_urls = [u.rstrip("/") for u in options.agent_urls] or [self.url]
        self.token = token
        self.o = options
        self.say = say
        self.server = server
        self.db_size = db_size
        self.machines = [Machine(i, [_mac(i, 0, options.mac_prefix), _mac(i, 1, options.mac_prefix)])
                         for i in range(options.nodes)]
        self.phases: list[Phase] = []
        self.phase: Phase | None = None
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._held: list[aiohttp.ClientSession] = []  # long polls: a connection each, no slot
        self._slots: asyncio.Semaphore | None = None
        self._queued_at: dict[str, float] = {}  # node name -> when the call that queues its work was sent

    # -- HTTP, timed by route ------------------------------------------------------------------
    async def call(self, method: str, path: str, route: str, *, token: str | None = None, json_body=None,
                   headers: dict | None = None, ok=(200, 201, 202), held: int | None = None,
                   base: str | None = None) -> Answer:
        """One request; its latency is recorded under `route` in the current phase (less the hold
        the server says it chose for the request). `held` (the machine's index): a long poll, which may wait on the server
        for a long time: it has a connection of its own and takes none of the `concurrency` slots
        (a real agent's long poll is one idle connection). `base`: the server's URL (a machine's:
        `machine_url`), else the operator's."""
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        async def send(http: aiohttp.ClientSession) -> tuple[Answer, float]:
            started = time.perf_counter()
            try:
                async with http.request(method, (base or self.url) + path, json=json_body, headers=hdrs) as r:
                    answer = Answer(r.status, r.headers, await r.text())
            except HTTP_ERRORS as exc:
                self._count_error(f"{route} {type(exc).__name__}")
                raise
            return answer, time.perf_counter() - started

        if held is not None:
            answer, elapsed = await send(self._held[held // HELD_PER_CLIENT])
        else:
            async with self._slots:
                answer, elapsed = await send(self._http)
        held = server_hold(answer.headers.get("server-timing", ""))
        if held:
            elapsed = max(0.0, elapsed - held[0] + held[1])
        phase = self.phase
        if phase is not None:
            phase.latencies.setdefault(route, []).append(elapsed)
        if answer.status_code not in ok:
            self._count_error(f"{route} {answer.status_code}")
        return answer

    def machine_url(self, m: Machine) -> str:
        """The server machine `m` talks to (Options.agent_urls)."""
        return self.agent_urls[m.index % len(self.agent_urls)]

    def _record(self, route: str, seconds: float) -> None:
        if self.phase is not None:
            self.phase.latencies.setdefault(route, []).append(seconds)

    def _count_error(self, key: str) -> None:
        if self.phase is not None:
            self.phase.errors[key] = self.phase.errors.get(key, 0) + 1

    async def admin(self, method: str, path: str, route: str | None = None, body=None, ok=(200, 201, 202)):
        answer = await self.call(method, "/api/v2" + path, route or f"{method} {path}", token=self.token,
                                 json_body=body, ok=ok)
        if answer.status_code not in ok:
            raise FleetError(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:400]}")
        return answer.json()

    # -- a machine's life ----------------------------------------------------------------------
    async def machine(self, m: Machine) -> None:
        try:
            while not self._stop.is_set():
                script = await self._boot_script(m)
                if "crowbar.url=" in script:  # the discovery image: the agent runs
                    found = NONCE_RE.search(script)
                    m.state = "discovery"
                    await self._register(m, found.group(1) if found else None)
                    action = await self._follow(m)
                    if action == "poweroff":
                        m.state = "off"
                        return
                else:  # its disk: the installed system boots and calls home
                    if not m.installed:
                        raise FleetError(f"machine {m.index} was told to boot a disk it has nothing on")
                    await self._call_home(m)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a machine that fails says why; the others go on
            self.failures.append(f"machine {m.index} ({m.name}): {type(exc).__name__}: {exc}")

    async def _boot_script(self, m: Machine) -> str:
        while True:
            try:
                answer = await self.call("GET", f"/boot/{m.script_name}", "GET /boot/{mac}.ipxe",
                                         base=self.machine_url(m))
                if answer.status_code == 200:
                    m.boot_id = f"{m.index}-{random.getrandbits(48):012x}"
                    return answer.text
            except HTTP_ERRORS:
                pass
            await asyncio.sleep(AGENT_RETRY)

    async def _register(self, m: Machine, nonce: str | None) -> None:
        body = inventory(m.index, m.macs)
        headers = {"X-Crowbar-Nonce": nonce} if nonce else {}
        while True:
            try:
                answer = await self.call("POST", "/api/v2/discovery", "POST /discovery", json_body=body,
                                         headers=headers, base=self.machine_url(m))
            except HTTP_ERRORS:
                await asyncio.sleep(AGENT_RETRY)
                continue
            if answer.status_code in (200, 201):
                data = answer.json()
                m.name, m.token = data["node"], data["token"]
                return
            if answer.status_code == 429:
                await asyncio.sleep(float(answer.headers.get("retry-after") or 20) + random.random() * 20)
            elif answer.status_code in (403, 409):
                raise FleetError(f"discovery refused (HTTP {answer.status_code}): {answer.text[:300]}")
            else:
                await asyncio.sleep(AGENT_RETRY)

    async def _follow(self, m: Machine) -> str:
        """Polls for instructions until told to reboot or power off (answered: which); a job
        result's answer may be the next instruction, followed without a poll."""
        then: dict | None = None  # a job result's answer: the next instruction, without a poll
        while not self._stop.is_set():
            if then is not None:
                data, then = then, None
            else:
                try:
                    answer = await self.call("GET", "/api/v2/agent/next", "GET /agent/next", token=m.token,
                                             headers={"Prefer": f"wait={self.o.long_poll}"} if self.o.long_poll
                                             else None, held=m.index if self.o.long_poll else None,
                                             base=self.machine_url(m))
                except HTTP_ERRORS:
                    await asyncio.sleep(AGENT_RETRY)
                    continue
                if answer.status_code == 401:
                    return "reboot"  # the token is gone: register again (the agent's step 1)
                if answer.status_code != 200:
                    await asyncio.sleep(AGENT_RETRY)
                    continue
                data = answer.json()
            action = data.get("action")
            if action in ("run", "reboot") and m.name in self._queued_at:
                self._record(DELIVERY, time.monotonic() - self._queued_at.pop(m.name))
            if action == "wait":
                seconds = self.o.poll if self.o.poll is not None else float(data.get("seconds", 5) or 0)
                await asyncio.sleep(seconds)
            elif action == "run":
                then = await self._run_job(m, data)
            elif action in ("reboot", "poweroff"):
                return action
            else:
                await asyncio.sleep(AGENT_RETRY)
        return "poweroff"

    async def _run_job(self, m: Machine, job: dict) -> dict | None:
        """Runs the job and posts its result, as the agent does (`Prefer: next-action`): the
        answer's next instruction when it has one to follow (run, reboot, poweroff), else None."""
        job_id = str(job.get("job"))
        script = str(job.get("script") or "")
        install = "/api/v2/agent/progress/" in script  # the image installer's job posts its phases
        output = "simulated\n"
        if install:
            m.state = "installing"
            await self._install(m, job_id)
            output = "crowbar-install: simulated install done\n"
        for _ in range(5):
            try:
                answer = await self.call("POST", f"/api/v2/agent/jobs/{job_id}", "POST /agent/jobs/{job}",
                                         token=m.token, json_body={"exit_code": 0, "output": output},
                                         headers={"Prefer": "next-action"}, base=self.machine_url(m))
                if answer.status_code < 300:
                    if install:
                        m.installed = True
                    data = answer.json()
                    return data if data.get("action") in ("run", "reboot", "poweroff") else None
            except HTTP_ERRORS:
                pass
            await asyncio.sleep(AGENT_RETRY)
        return None

    async def _install(self, m: Machine, job_id: str) -> None:
        """The install script's reports over --install-delay seconds, as crowbar/provisioner/install.py
        sends them: each phase as it starts and the bytes written every 3 s, nothing before the
        `next` seconds of the last answer (a report due then is not sent: the script reports the
        phase it is in at its next phase or tick). Best effort: a failed report is not retried."""
        delay, total = self.o.install_delay, 1 << 30
        writing = 0.8 * delay  # most of an install is writing the image
        steps = [(0.0, "check-disk", 0), (0.0, "partition", 0), (0.0, "write-image", 0)]
        steps += [(t, "write-image", int(total * t / writing)) for t in range(3, int(writing - 1e-9) + 1, 3)]
        steps += [(writing, "verify-image", total), (0.85 * delay, "bootloader", total),
                  (0.95 * delay, "configure", total), (delay, "installed", total)]
        started = time.monotonic()
        quiet_until = 0.0
        for at, phase, written in steps:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if time.monotonic() < quiet_until:
                continue
            try:
                answer = await self.call("POST", f"/api/v2/agent/progress/{job_id}", "POST /agent/progress/{job}",
                                         token=m.token, json_body={"phase": phase, "bytes": written, "total": total},
                                         base=self.machine_url(m))
                pause = float(answer.json().get("next") or 0) if answer.status_code == 200 else 0.0
            except (*HTTP_ERRORS, ValueError):
                pause = 0.0
            quiet_until = time.monotonic() + pause

    async def _call_home(self, m: Machine) -> None:
        """As crowbar-callhome whose sshd answers at once: one `ready` (installed -> readying ->
        ready); a server that answers `installed` to it gets the two steps."""
        facts = {"boot_id": m.boot_id, "kernel": "6.1.0-28-amd64", "os": "Debian GNU/Linux 12 (bookworm)"}
        ready = ("ready", {"host_keys": [HOST_KEY]})
        for step, extra in (ready, ("booted", {}), ready):
            state = await self._post_booted(m, {**facts, "step": step, **extra})
            if step == "ready" and state != "installed":
                break
        m.state = "ready"

    async def _post_booted(self, m: Machine, body: dict) -> str | None:
        """One call home, retried as crowbar-callhome does (120 tries, 5 s apart): the node's state."""
        for _ in range(120):
            try:
                answer = await self.call("POST", "/api/v2/agent/booted", "POST /agent/booted", token=m.token,
                                         json_body=body, base=self.machine_url(m))
            except HTTP_ERRORS:
                await asyncio.sleep(AGENT_RETRY)
                continue
            if answer.status_code < 300:
                return answer.json().get("state")
            if answer.status_code < 500:
                raise FleetError(f"call home ({body['step']}) refused: HTTP {answer.status_code} {answer.text[:300]}")
            await asyncio.sleep(AGENT_RETRY)
        raise FleetError(f"call home ({body['step']}) not answered after 120 tries")

    # -- the operator ----------------------------------------------------------------------------
    def _begin(self, name: str) -> Phase:
        if self.phase is not None:
            self._end()
        if self.server is not None:
            self.server.reset_peak()
        self.phase = Phase(name)
        self.phase.server["_cpu0"] = self.server.cpu_seconds() if self.server else None
        self.phases.append(self.phase)
        return self.phase

    def _end(self) -> None:
        phase, self.phase = self.phase, None
        phase.ended = time.monotonic()
        cpu0 = phase.server.pop("_cpu0", None)
        if self.server is not None:
            phase.server["server_cpu_s"] = round(self.server.cpu_seconds() - cpu0, 1)
            phase.server["server_peak_rss_mb"] = self.server.peak_rss_mb()
        if self.db_size is not None:
            size = self.db_size()
            if size is not None:
                phase.server["db_mb"] = round(size / 2**20, 1)
        self.say(_summary(phase.report()))

    async def _until(self, what: str, done: Callable[[], int], total: int) -> None:
        """Wait until done() reaches total, showing progress; FleetError past the timeout."""
        deadline = time.monotonic() + self.o.timeout
        last = -1.0
        while (count := done()) < total:
            if self.failures:
                raise FleetError(f"{what}: {len(self.failures)} machines failed; first: {self.failures[0]}")
            now = time.monotonic()
            if now > deadline:
                raise FleetError(f"{what}: {count} of {total} after {self.o.timeout:.0f} s")
            if now - last >= 5:
                self.say(f"{self.phase.name}: {count}/{total} {what} ({self.phase.seconds:.0f} s)")
                last = now
            await asyncio.sleep(0.2)
        self.phase.nodes = total

    async def run(self) -> dict:
        self._slots = asyncio.Semaphore(self.o.concurrency)
        tls = ssl.create_default_context() if self.url.startswith("https:") else None  # made once, shared
        async with contextlib.AsyncExitStack() as stack:
            def session(connections: int, timeout: float) -> aiohttp.ClientSession:
                # An idle connection is closed here before the server's keep-alive ends (uvicorn's 5 s),
                # so that no request is sent on a connection the server is closing (a reset).
                return aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE,
                                                   **({"ssl": tls} if tls else {})),
                    timeout=aiohttp.ClientTimeout(total=timeout), skip_auto_headers=("User-Agent",))

            self._http = await stack.enter_async_context(session(self.o.concurrency, 120.0))
            # Long polls: a connection per machine, in pools of HELD_PER_CLIENT machines (a pool's
            # work for each request grows with its connections).
            self._held = [await stack.enter_async_context(session(HELD_PER_CLIENT, self.o.long_poll + 60.0))
                          for _ in range(0 if not self.o.long_poll else -(-len(self.machines) // HELD_PER_CLIENT))]
            tasks: list[asyncio.Task] = [asyncio.create_task(self._watch_lag())]
            started = time.monotonic()
            try:
                await self._operate(tasks)
            finally:
                self._stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if self.phase is not None:
                    self._end()
        return {"nodes": self.o.nodes, "concurrency": self.o.concurrency, "install_delay": self.o.install_delay,
                "total_seconds": round(time.monotonic() - started, 2),
                "phases": [p.report() for p in self.phases], "failures": self.failures[:20]}

    async def _watch_lag(self, every: float = 0.1) -> None:
        """How late this process's event loop runs a timer: the part of every latency measured here
        that is the simulator's own (one process driving thousands of machines), not the server's."""
        while not self._stop.is_set():
            due = time.perf_counter() + every
            await asyncio.sleep(every)
            if self.phase is not None:
                self.phase.lag.append(max(0.0, time.perf_counter() - due))

    async def _operate(self, tasks: list[asyncio.Task]) -> None:
        n = len(self.machines)
        if self.o.admin_network:
            await self._size_admin_network(n)
        self._begin("discover")
        tasks.extend(asyncio.create_task(self.machine(m)) for m in self.machines)
        await self._until("discovered", lambda: sum(1 for m in self.machines if m.token), n)
        names = [m.name for m in self.machines]
        if "idle" in self.o.phases:  # every agent polls, nothing else happens: the polls' own cost
            self._begin("idle")
            await asyncio.sleep(self.o.idle_seconds)
            self.phase.nodes = n
        if "enroll" in self.o.phases and self.o.enroll_power:
            self._begin("enroll")
            # a power item is ~170 bytes of JSON, and a body at most 1 MiB (api/body.py): 5,000 a call
            for batch in _batches(names, min(self.o.batch, ENROLL_BATCH)):
                await self._enroll(batch)
            self.phase.nodes = n
        if "allocate" in self.o.phases and not self.o.allocate_on_deploy:
            self._begin("allocate")
            for batch in _batches(names, self.o.batch):
                self._queued_at.update((name, time.monotonic()) for name in batch)
                await self.admin("POST", "/nodes/allocate", body={"nodes": batch})
            self.phase.nodes = n
        if "deploy" in self.o.phases:
            self._begin("allocate+deploy" if self.o.allocate_on_deploy else "deploy")
            batches = _batches(names, self.o.batch)
            for k, batch in enumerate(batches, 1):
                if len(batches) <= 4 or k % 4 == 1:  # a call of thousands takes a while: say it is out
                    self.say(f"{self.phase.name}: deploy call {k}/{len(batches)} ({len(batch)} nodes) sent "
                             f"({self.phase.seconds:.0f} s)")
                self._queued_at.update((name, time.monotonic()) for name in batch)
                await self.admin("POST", "/nodes/deploy", body={"nodes": batch, "os": self.o.os_name,
                                                                **({"allocate": True} if self.o.allocate_on_deploy else {})})
                if k % 4 == 0 or k == len(batches):  # the calls of a large fleet take minutes: show them
                    ready = sum(1 for m in self.machines if m.state == "ready")
                    self.say(f"{self.phase.name}: {k}/{len(batches)} deploy calls answered, {ready}/{n} ready "
                             f"({self.phase.seconds:.0f} s)")
            await self._until("ready", lambda: sum(1 for m in self.machines if m.state == "ready"), n)
        if "anneal" in self.o.phases:
            self._begin("anneal")
            await self._anneal(names)

    async def _size_admin_network(self, n: int) -> None:
        """A fleet this size needs an admin network with an address for every node (the default
        template's has 80): the operator makes it a /16 first, as a site of this size would."""
        networks = await self.admin("GET", "/networks")
        items = networks.get("items", networks) if isinstance(networks, dict) else networks
        admin = next((net for net in items if net.get("name") == "admin"), None)
        if admin is None or n <= 60:
            return
        await self.admin("PATCH", "/networks/admin?force=true", "PATCH /networks/admin", body={
            "subnet": "10.128.0.0/16", "router": "10.128.0.1",
            "ranges": {"admin": {"start": "10.128.0.10", "end": "10.128.0.11"},
                       "dhcp": {"start": "10.128.0.21", "end": "10.128.0.200"},
                       "switch": {"start": "10.128.0.241", "end": "10.128.0.250"},
                       "host": {"start": "10.128.1.1", "end": "10.128.255.250"}}})

    async def _enroll(self, names: list[str]) -> None:
        """The nodes' power drivers and settings, a batch per call (PUT /nodes/power)."""
        items = []
        for name in names:
            settings = {"machine": name.split(".")[0]}
            if self.o.state_dir:
                settings["state_dir"] = self.o.state_dir
            items.append({"node": name, "driver": "fake", "settings": settings})
        await self.admin("PUT", "/nodes/power", body={"items": items})

    async def _anneal(self, names: list[str]) -> None:
        await self.admin("POST", "/barclamps", body={"files": {"barclamp.yml": FLEET_BARCLAMP}})
        await self.admin("POST", "/deployments", body={"name": DEPLOYMENT}, ok=(200, 201))
        for role in FLEET_ROLES:
            for batch in _batches(names, 2000):
                await self.admin("POST", f"/deployments/{DEPLOYMENT}/bind", "POST /deployments/{d}/bind",
                                 body={"role": role, "nodes": batch})
        await self.admin("POST", f"/deployments/{DEPLOYMENT}/commit", "POST /deployments/{d}/commit")
        deadline = time.monotonic() + self.o.timeout
        last = 0.0
        while True:
            status = await self._anneal_status()
            counts = status.get("counts", {})
            if status.get("status") == "finished":
                break
            if status.get("status") == "failed":
                raise FleetError(f"anneal failed: {json.dumps(counts)}")
            if time.monotonic() > deadline:
                raise FleetError(f"anneal: not finished after {self.o.timeout:.0f} s: {json.dumps(counts)}")
            if time.monotonic() - last >= 5:
                self.say(f"anneal: {counts.get('active', 0)}/{status.get('total', 0)} noderoles active "
                         f"({self.phase.seconds:.0f} s)")
                last = time.monotonic()
            await asyncio.sleep(0.5)
        self.phase.nodes = len(names)
        self.phase.server["noderoles"] = status.get("total")

    async def _anneal_status(self) -> dict:
        answer = await self.call("GET", f"/api/v2/anneal?deployment={DEPLOYMENT}", "GET /anneal",
                                 token=self.token, ok=(200, 202, 409))
        return answer.json()


def _batches(items: list, size: int = BATCH) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _summary(report: dict) -> str:
    slowest = sorted(report["routes"].items(), key=lambda kv: -kv[1]["count"])[:3]
    routes = "; ".join(f"{r} x{v['count']} p50 {v['p50_ms']} p99 {v['p99_ms']} ms" for r, v in slowest)
    extra = "".join(f", {k} {report[k]}" for k in ("server_cpu_s", "server_peak_rss_mb", "db_mb") if k in report)
    return (f"{report['phase']}: {report['nodes']} nodes in {report['seconds']} s "
            f"({report['nodes_per_s']} nodes/s){extra}; {routes}")


def simulate(url: str, token: str, options: Options, **kw) -> dict:
    """Run a fleet to the end (asyncio.run) and return its report."""
    return asyncio.run(Fleet(url, token, options, **kw).run())


# -- a server of our own ---------------------------------------------------------------------------
FAKE_IMAGE_DIGEST = "f1ee7" + "0" * 59


def fake_image_store(store: Path, os_name: str = "debian-12") -> Path:
    """An OS image store holding one tiny image of `os_name`: deploy checks the image exists and
    plans the install job from its manifest; simulated machines never fetch it."""
    import gzip
    import hashlib

    folder = store / os_name / FAKE_IMAGE_DIGEST
    folder.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(b"simulated root filesystem\n", mtime=0)
    (folder / "root.img.gz").write_bytes(data)
    manifest = {"name": os_name, "digest": FAKE_IMAGE_DIGEST, "version": "12", "arch": "amd64",
                "kernel": "6.1.0-28-amd64", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "fs_size": 2 << 30, "fs_uuid": "f1" * 8, "packages": [], "built_at": "2026-12-01T00:00:00+00:00",
                "simulated": True}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return store


class LocalServer:
    """`crowbar server` as a child process, set up for a simulated fleet: its own data dir, a fake
    OS image store, no discovery rate limit worth the name, no access log. Stopped by its PID."""

    def __init__(self, root: Path, *, database: str | None = None, workers: int = 8, port: int | None = None,
                 extra: list[str] | None = None, env: dict | None = None):
        import socket
        import sys

        self.root, self.database = root, database
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = root / "data"
        self.log_path = root / "server.log"
        self.args = [sys.executable, "-c", "from crowbar.cli.main import main; main()", "server",
                     "--listen", f"127.0.0.1:{port}", "--data-dir", str(self.data_dir), "--workers", str(workers),
                     "--os-images", str(fake_image_store(root / "os-images")),
                     "--discovery-rate", "100000", "--discovery-burst", "100000", "--no-access-log",
                     *(["--database", database] if database else []), *(extra or [])]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CROWBAR_")}
        self.env.update(XDG_CONFIG_HOME=str(root / "config"), HOME=str(root / "home"), **(env or {}))
        self.proc = None

    def start(self, timeout: float = 90.0) -> "LocalServer":
        import subprocess

        for sub in ("config", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError(f"crowbar server exited with {self.proc.returncode}: "
                                 f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v2/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise FleetError(f"crowbar server not healthy after {timeout:.0f} s (log: {self.log_path})")

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def process(self) -> ServerProcess:
        return ServerProcess(self.proc.pid)

    def sqlite_size(self) -> int | None:
        """Bytes of the SQLite database and its WAL (None on PostgreSQL)."""
        if self.database:
            return None
        return sum(p.stat().st_size for p in self.data_dir.glob("crowbar.db*") if p.is_file())

    def stop(self, timeout: float = 30.0) -> None:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
