"""The `nixie-cli` command: run a node, or a local cluster of nodes."""

import copy
import logging
import logging.config
import socket
import sys
from pathlib import Path
from typing import Any

import click
import uvicorn

from nixie import __version__
from nixie.api import create_app, open_node
from nixie.errors import NixieError
from nixie.launcher import run_local_cluster
from nixie.settings import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, Settings

logger = logging.getLogger(__name__)

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
DEFAULTS = Settings()
# Requests kept out of the access log unless debugging: peers exchange
# several a second, and health checks come every second or two.
QUIET_PATHS = (
    "/_nixie/gossip",
    "/_nixie/digest",
    "/_nixie/repair",
    "/_nixie/sync",
    "/_nixie/health",
)


def _peer_list(
    _: click.Context, __: click.Parameter, value: str | None
) -> tuple[str, ...]:
    return tuple(url.strip() for url in (value or "").split(",") if url.strip())


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click.option(
    "--host",
    default=DEFAULT_HOST,
    envvar="NIXIE_HOST",
    show_envvar=True,
    help="Address to listen on.",
)
@click.option(
    "-p",
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    envvar="NIXIE_PORT",
    show_envvar=True,
    help="TCP port to listen on.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    envvar="NIXIE_DATA_DIR",
    show_envvar=True,
    help="Folder for the node's database; created if missing.",
)
@click.option(
    "--peers",
    callback=_peer_list,
    envvar="NIXIE_PEERS",
    show_envvar=True,
    help="Comma-separated base URLs of other nodes.",
)
@click.option(
    "--peers-dns",
    metavar="NAME:PORT",
    envvar="NIXIE_PEERS_DNS",
    show_envvar=True,
    help="Treat every address NAME resolves to as a peer (re-resolved).",
)
@click.option(
    "--advertise-url",
    envvar="NIXIE_ADVERTISE_URL",
    show_envvar=True,
    help="URL peers reach this node at  [default: from host and port, or "
    "the hostname when listening on all addresses]",
)
@click.option(
    "--cluster-secret",
    envvar="NIXIE_CLUSTER_SECRET",
    show_envvar=True,
    help="Secret shared by all nodes; without it only loopback peers are accepted.",
)
@click.option(
    "--gossip-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.gossip_interval,
    envvar="NIXIE_GOSSIP_INTERVAL",
    show_envvar=True,
    help="Seconds between anti-entropy rounds.",
)
@click.option(
    "--peer-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.peer_timeout,
    envvar="NIXIE_PEER_TIMEOUT",
    show_envvar=True,
    help="Seconds one exchange with a peer may take; must exceed the gossip interval.",
)
@click.option(
    "--sync-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.sync_timeout,
    envvar="NIXIE_SYNC_TIMEOUT",
    show_envvar=True,
    help="Seconds a request may wait for other nodes (Nixie-Context, "
    "Nixie-Consistency) before answering 503.",
)
@click.option(
    "--idempotency-retention",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.idempotency_retention,
    envvar="NIXIE_IDEMPOTENCY_RETENTION",
    show_envvar=True,
    help="Seconds a write's Idempotency-Key is remembered.",
)
@click.option(
    "-d",
    "--debug",
    is_flag=True,
    envvar="NIXIE_DEBUG",
    show_envvar=True,
    help="Log at debug level.",
)
@click.version_option(__version__, "--version", prog_name="nixie-cli")
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Run a Nixie node serving the counter API."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        settings = Settings(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    serve(settings)


@cli.command(context_settings=CONTEXT)
@click.option(
    "-n",
    "--nodes",
    type=click.IntRange(1, 16),
    default=3,
    help="How many nodes to start.",
)
@click.option(
    "-p",
    "--base-port",
    type=click.IntRange(1, 65535 - 16),
    default=DEFAULT_PORT,
    help="Port of the first node; the others follow.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    help="Folder holding one data dir per node.",
)
@click.option(
    "--gossip-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.gossip_interval,
    help="Seconds between anti-entropy rounds.",
)
@click.option(
    "--cluster-secret",
    envvar="NIXIE_CLUSTER_SECRET",
    show_envvar=True,
    help="Secret for the nodes  [default: a fresh random one]",
)
@click.option("-d", "--debug", is_flag=True, help="Log at debug level.")
def cluster(
    nodes: int,
    base_port: int,
    data_dir: Path,
    gossip_interval: float,
    cluster_secret: str | None,
    debug: bool,
) -> None:
    """Run a local cluster on consecutive ports until Ctrl-C."""
    status = run_local_cluster(
        nodes=nodes,
        base_port=base_port,
        data_root=data_dir,
        gossip_interval=gossip_interval,
        secret=cluster_secret,
        debug=debug,
    )
    sys.exit(status)


def serve(settings: Settings) -> None:
    """Open the data dir and serve the API until interrupted."""
    log_config = logging_config(settings.debug)
    logging.config.dictConfig(log_config)
    listener = listen(settings.host, settings.port)
    try:
        node = open_node(settings)
    except NixieError as exc:
        listener.close()
        raise click.ClickException(str(exc)) from exc

    logger.info(
        "nixie %s, replica %s, data dir %s",
        __version__,
        node.replica_id,
        settings.data_dir,
    )
    config = uvicorn.Config(
        create_app(settings, node),
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        log_level="debug" if settings.debug else "info",
    )
    # uvicorn names no address when it is handed a socket.
    logger.info("listening on http://%s:%d", settings.host, settings.port)
    uvicorn.Server(config).run(sockets=[listener])


def listen(host: str, port: int) -> socket.socket:
    """Bind the node's listening socket, or fail with one line saying why.

    Binding here, before uvicorn starts, turns a bad address or a port in
    use into a plain error instead of a traceback after start-up.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    listener.set_inheritable(True)
    return listener


class QuietPeerTraffic(logging.Filter):
    """Keep the access log to client requests: no peer traffic, no health checks."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop access lines of the peer and health endpoints."""
        args = record.args
        path = args[2] if isinstance(args, tuple) and len(args) > 2 else ""
        return not (isinstance(path, str) and path.startswith(QUIET_PATHS))


def logging_config(debug: bool) -> dict[str, Any]:
    """Return uvicorn's logging set-up with Nixie's loggers added.

    Peer exchanges stay out of the access log unless debugging.
    """
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if not debug:
        config["filters"] = {"peers": {"()": QuietPeerTraffic}}
        config["handlers"]["access"]["filters"] = ["peers"]
    config["loggers"]["nixie"] = {
        "handlers": ["default"],
        "level": "DEBUG" if debug else "INFO",
        "propagate": False,
    }
    return config


def main() -> None:
    """Run the CLI; usage errors are one line on stderr and exit status 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"nixie-cli: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
