"""`crowbar server`: migrate the database, make sure an admin token exists, serve the API, anneal."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from crowbar import config
from crowbar.api.app import create_app
from crowbar.db.session import Database
from crowbar.engine.annealer import Annealer
from crowbar.services import auth, bootstrap

log = logging.getLogger("crowbar.server")


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen must be HOST:PORT (got {listen!r})")
    return host.strip("[]"), int(port)


def publish_token(data_dir: Path, host: str, port: int) -> Path:
    """Copy the admin token where the local CLI looks for this endpoint's token."""
    token = (data_dir / "admin.token").read_text().strip()
    target = config.registry_file(host, port)
    auth.write_secret(target, token)
    if host in ("0.0.0.0", "::", "localhost"):
        auth.write_secret(config.registry_file("127.0.0.1", port), token)
    return target


def serve(listen: str, database: str | None, workers: int, data_dir: Path | None = None) -> None:
    host, port = parse_listen(listen)
    data_dir = Path(data_dir or config.data_dir())
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = config.database_url(database, data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = Database(url)
    bootstrap.prepare(db)
    token_file = data_dir / "admin.token"
    with db.session() as s:
        created = auth.ensure_admin_token(s, token_file)
    if created:
        log.info("created the admin API token in %s", token_file)
    elif not token_file.exists():
        log.warning("the admin token exists in the database but %s is missing", token_file)
    if token_file.exists():
        publish_token(data_dir, host, port)
    annealer = Annealer(db, workers=workers, workdir=data_dir / "runs")
    (data_dir / "runs").mkdir(exist_ok=True)
    app = create_app(db, annealer)
    log.info("database %s; API on http://%s:%d/api/v2 (docs at /api/v2/docs)", db.engine.url.render_as_string(),
             host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
