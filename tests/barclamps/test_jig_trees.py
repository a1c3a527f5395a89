"""The ansible/ and puppet/ trees a barclamp carries for the ansible and puppet jigs: read whole
(hidden entries skipped, nothing followed), held to the same rules on every way in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crowbar.barclamps import loader
from crowbar.cli import barclamps as cli_barclamps
from crowbar.cli.client import CliError
from crowbar.errors import BarclampError

YML = """\
barclamp: {name: trees}
roles:
  - {name: web, jig: ansible}
  - {name: db, jig: puppet}
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


FILES = {"barclamp.yml": YML, "ansible/web.yml": "- hosts: all\n", "ansible/roles/w/tasks/main.yml": "[]\n",
         "ansible/roles/w/templates/a.conf.j2": "x={{ x }}\n", "puppet/manifests/db.pp": "include db\n",
         "puppet/modules/db/manifests/init.pp": "class db {}\n"}


def test_a_directory_gives_each_role_its_whole_tree(tmp_path):
    root = _write(tmp_path / "bc", {**FILES, "ansible/.git/config": "[core]\n", "ansible/roles/w/.gitignore": "*\n"})
    bc = loader.read(root)
    roles = {r.name: r for r in bc.roles}
    assert [f["name"] for f in roles["web"].scripts] == [
        "roles/w/tasks/main.yml", "roles/w/templates/a.conf.j2", "web.yml"]
    assert [f["name"] for f in roles["db"].scripts] == ["manifests/db.pp", "modules/db/manifests/init.pp"]
    # the CLI sends exactly what the server would read
    assert cli_barclamps.files_of(root) == {k: v for k, v in FILES.items()}
    assert loader.read_files(cli_barclamps.files_of(root)).roles[0].scripts == roles["web"].scripts


@pytest.mark.parametrize("missing, expected", [("ansible/web.yml", "jig 'ansible' needs"),
                                               ("puppet/manifests/db.pp", "jig 'puppet' needs")])
def test_a_role_without_its_playbook_or_manifest_is_refused(tmp_path, missing, expected):
    files = dict(FILES)
    del files[missing]
    with pytest.raises(BarclampError) as e:
        loader.read(_write(tmp_path / "bc", files))
    assert expected in str(e.value) and missing in str(e.value)


def test_a_symbolic_link_in_a_tree_is_refused(tmp_path):
    root = _write(tmp_path / "bc", FILES)
    os.symlink("/etc/passwd", root / "ansible" / "roles" / "w" / "tasks" / "passwd")
    with pytest.raises(BarclampError, match="symbolic link"):
        loader.read(root)
    with pytest.raises(CliError, match="symbolic link"):
        cli_barclamps.files_of(root)


@pytest.mark.parametrize("path", ["ansible/.hidden.yml", "ansible/roles/../../x", "other/x.yml",
                                  "ansible/roles/w/tasks/main.yml/inner", "ansible/a\x01b", "puppet"])
def test_an_upload_is_held_to_the_layout(path):
    files = {**FILES, path: "x\n"}
    with pytest.raises(BarclampError):
        loader.read_files(files)
