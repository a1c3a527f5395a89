"""`crowbar server`'s configuration file, and the commands that run beside the server on its host:
`crowbar server install-unit` (a systemd unit) and `crowbar server reissue-admin-token`.

The configuration file is TOML with one key per `crowbar server` option, dashes or underscores
(`packaging/crowbar.toml` shows them all):

    listen = ["0.0.0.0:3000", "unix:/run/crowbar/api.sock"]
    database = "postgresql://crowbar@/crowbar"
    data_dir = "/var/lib/crowbar"
    tls_cert = "/etc/crowbar/tls/server.pem"
    tls_key = "/etc/crowbar/tls/server.key"
    log_format = "json"

A setting given on the command line or through its environment variable wins over the file; an
unknown key or a value of the wrong type is one line naming the file and the key.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from textwrap import dedent

import click
from click.core import ParameterSource

from crowbar import config
from crowbar.cli import local
from crowbar.cli.client import CliError

UNIT_PATH = Path("/etc/systemd/system/crowbar.service")
CONFIG_PATH = Path("/etc/crowbar/crowbar.toml")


def read(ctx: click.Context, path: Path) -> dict:
    """The settings of the file at `path` that neither the command line nor the environment set,
    converted and checked as their options are."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise CliError(f"config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config {path}: not valid TOML: {exc}") from None
    params = {p.name: p for p in ctx.command.params if p.name != "config_file"}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        param = params.get(name)
        if param is None:
            raise CliError(f"config {path}: unknown setting {key!r} (known: {', '.join(sorted(params))})")
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        if param.multiple and isinstance(value, str):
            value = [value]
        if param.multiple and not isinstance(value, list) or isinstance(value, dict) or \
                not param.multiple and isinstance(value, list):
            raise CliError(f"config {path}: {key}: expected {'a list' if param.multiple else 'a single value'}")
        if isinstance(param.type, click.types.StringParamType) and not all(
                isinstance(v, str) for v in (value if param.multiple else [value])):
            raise CliError(f"config {path}: {key}: expected text, got {value!r}")
        try:
            out[name] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise CliError(f"config {path}: {key}: {exc.message}") from None
    return out


def unit_text(config_file: Path, user: str | None) -> str:
    """A systemd unit that runs `crowbar server --config FILE` with this Python (its venv)."""
    root = user in (None, "root")
    return dedent(f"""\
        # Crowbar server: written by `crowbar server install-unit` (docs/operations.md).
        [Unit]
        Description=Crowbar bare-metal provisioning server
        Wants=network-online.target
        After=network-online.target postgresql.service

        [Service]
        Type=exec
        ExecStart={sys.executable} -m crowbar.cli.main server --config {config_file}
        Restart=on-failure
        RestartSec=5
        # SIGTERM: the API stops, the loops hand back their runs, dnsmasq is stopped; then the exit.
        KillSignal=SIGTERM
        TimeoutStopSec=60
        Environment=PYTHONUNBUFFERED=1
        """) + ("" if root else dedent(f"""\
        User={user}
        # --provision runs dnsmasq (DHCP on port 67, TFTP on 69) and reads the admin interface's neighbours.
        AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW
        """)) + dedent("""\
        NoNewPrivileges=no
        ProtectSystem=full
        PrivateTmp=yes
        UMask=0077

        [Install]
        WantedBy=multi-user.target
        """)


def add_commands(server: click.Group) -> None:
    @server.command("install-unit")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), default=CONFIG_PATH,
                  show_default=True, help="the configuration file the unit starts the server with")
    @click.option("--user", help="run the server as this user (default: root, which --provision needs "
                                  "unless given capabilities)")
    @click.option("--output", type=click.Path(path_type=Path), default=UNIT_PATH, show_default=True,
                  help="where to write the unit ('-': standard output)")
    def install_unit(config_file: Path, user: str | None, output: Path) -> None:
        """Write a systemd unit for `crowbar server --config FILE`; then `systemctl daemon-reload`
        and `systemctl enable --now crowbar`."""
        text = unit_text(config_file.absolute(), user)
        if str(output) == "-":
            click.echo(text, nl=False)
            return
        try:
            output.write_text(text)
        except OSError as exc:
            raise CliError(f"{output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output}; now: systemctl daemon-reload && systemctl enable --now {output.stem}")
        if not config_file.exists():
            click.echo(f"note: {config_file} does not exist yet (packaging/crowbar.toml is an example)", err=True)

    @server.command("reissue-admin-token")
    @click.option("--database", envvar="CROWBAR_DATABASE_URL")
    @click.option("--data-dir", type=click.Path(path_type=Path), envvar="CROWBAR_DATA_DIR")
    @click.option("--config", "config_file", type=click.Path(path_type=Path), envvar="CROWBAR_CONFIG",
                  help="take --database and --data-dir from this file when not given")
    @click.pass_context
    def reissue_admin_token(ctx: click.Context, database: str | None, data_dir: Path | None,
                            config_file: Path | None) -> None:
        """A new token for the user `admin` (made admin again if it was demoted or deleted): the old
        one stops working at once. Written to <data dir>/admin.token and wherever the local CLI
        found the old one. Run on the server's host, as the user that runs the server."""
        if config_file is not None:
            settings = read(ctx.parent, config_file)
            database = database or settings.get("database")
            data_dir = data_dir or settings.get("data_dir")
        try:
            data_dir = config.make_data_dir(data_dir)
            url = config.database_url(database, data_dir)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        token_file, updated = local.reissue_admin_token(url, data_dir)
        click.echo(f"a new admin token is in {token_file}" + (f" (and {len(updated)} CLI token file"
                   f"{'s' if len(updated) != 1 else ''} of this user)" if updated else ""))
        click.echo("the old admin token no longer works", err=True)


