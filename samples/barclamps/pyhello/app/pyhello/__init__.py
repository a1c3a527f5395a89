"""pyhello: answers GET / with its message and version (PYHELLO_MESSAGE, `--port`)."""

import argparse
import os

import bottle

VERSION = "1.0"

app = bottle.Bottle()


@app.get("/")
def index():
    bottle.response.content_type = "text/plain"
    return f"{os.environ.get('PYHELLO_MESSAGE', 'Hello from pyhello')} (pyhello {VERSION})\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="pyhello")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args()
    bottle.run(app, host=args.host, port=args.port, quiet=True)
