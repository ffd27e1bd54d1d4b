"""A local folder served over HTTP for the tests of web inputs (fsspec's HTTP file system reads its index pages)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serving(folder: Path, handler: type[SimpleHTTPRequestHandler] = QuietHandler) -> Iterator[str]:
    """`folder` served on a free local port while the block runs: its URL, ending in '/'."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()



def presigned_handler(signed: str, served: str, asked: list[str]) -> type[QuietHandler]:
    """A handler that serves the file `served` at the address `signed` (its path and query) alone, as S3 serves a
    presigned URL: any other request, a file beside it too, is refused with 403. Each request's path, unquoted (aiohttp
    sends a query's '%2F' as '/'), is appended to `asked`."""
    from urllib.parse import unquote

    class Presigned(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            asked.append(unquote(self.path))
            if asked[-1] != unquote(signed):  # a request its signature does not cover is refused
                self.send_error(403)
            else:
                self.path = served
                super().do_GET()

        do_HEAD = do_GET

    return Presigned
