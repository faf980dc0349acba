"""What every stand-in server shares: ``start()``/``stop()`` as a context manager."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from .certs import TLSFiles


class Missing(RuntimeError):
    """What a stand-in needs is not installed (a server binary, Azurite, runuser): the message says in one
    line what to install or set. The stand-ins CLI prints it without a traceback."""


class StandIn:
    """``with StandIn() as server: ...`` starts and stops it. A start that fails partway stops what it had
    started (a server process, a temporary directory) before the error goes on: nothing is orphaned.
    ``tls``: the certificate files of a stand-in that serves TLS (made by its ``start``)."""

    tls: TLSFiles | None = None

    @property
    def ca_file(self) -> str:
        """The CA certificate that signed the stand-in's TLS certificate (for clients to verify it)."""
        assert self.tls is not None, "not started"
        return self.tls.ca_file

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
