"""Ansible callback plugin of Crowbar's ansible jig (crowbar/jigs/ansible.py): one JSON line per
event, written and flushed as it happens to the file named by $CROWBAR_ANSIBLE_EVENTS, so the jig
can follow a run host by host and pick each host's result, failures and published facts apart.

Loaded by ansible-playbook through ANSIBLE_CALLBACK_PLUGINS / ANSIBLE_CALLBACKS_ENABLED, beside the
default stdout callback; it imports nothing of Crowbar (it runs in ansible-playbook's process).
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: crowbar_events
    type: notification
    short_description: JSON lines of plays, tasks and per-host results for Crowbar's ansible jig
    description: Writes one JSON object per event to the file named by CROWBAR_ANSIBLE_EVENTS.
    requirements: [CROWBAR_ANSIBLE_EVENTS in the environment]
"""

WALL_PREFIX = "crowbar_wall"  # facts set with set_fact whose names start with this go to the wall
MAX_TEXT = 4000  # characters of a failed task's stdout/stderr kept in the log


def _short(text) -> str:
    text = text if isinstance(text, str) else json.dumps(text, default=str)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"... ({len(text) - MAX_TEXT} more characters)"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "crowbar_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("CROWBAR_ANSIBLE_EVENTS")
        self._out = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - open for the run
        self._play = ""
        self._task = ""

    def _emit(self, **event) -> None:
        if self._out is not None:
            self._out.write(json.dumps(event, default=str) + "\n")
            self._out.flush()

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name().strip()
        self._emit(event="play", play=self._play)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task = task.get_name().strip()

    def v2_playbook_on_handler_task_start(self, task):
        self._task = task.get_name().strip()

    def _result(self, result, status: str, **extra) -> None:
        data = result._result
        task = result._task.get_name().strip() if result._task else self._task
        event = {"event": "result", "host": result._host.get_name(), "play": self._play, "task": task,
                 "status": status, "changed": bool(data.get("changed"))}
        facts = data.get("ansible_facts") or {}
        wall = [{k: v} for k, v in facts.items() if isinstance(k, str) and k.startswith(WALL_PREFIX)]
        if wall and status == "ok":
            event["wall"] = wall
        if status in ("failed", "unreachable"):
            msg = data.get("msg") or data.get("reason") or ""
            event["msg"] = _short(msg)
            for key in ("stdout", "stderr", "module_stderr", "module_stdout"):
                if data.get(key):
                    event[key] = _short(data[key])
        event.update(extra)
        self._emit(**event)

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed", ignored=bool(ignore_errors))

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._emit(event="stats", hosts=hosts)
