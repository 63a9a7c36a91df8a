"""The `nixie-cli` command: run a node."""

import copy
import logging
import logging.config
import sys
from pathlib import Path
from typing import Any

import click
import uvicorn

from nixie import __version__
from nixie.api import create_app
from nixie.errors import NixieError
from nixie.node import Node
from nixie.settings import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, Settings
from nixie.store import Store

logger = logging.getLogger(__name__)

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


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
    type=click.IntRange(0, 65535),
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
    "-d",
    "--debug",
    is_flag=True,
    envvar="NIXIE_DEBUG",
    show_envvar=True,
    help="Log at debug level.",
)
@click.version_option(__version__, prog_name="nixie-cli")
@click.pass_context
def cli(ctx: click.Context, host: str, port: int, data_dir: Path, debug: bool) -> None:
    """Run a Nixie node serving the counter API."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings(host=host, port=port, data_dir=data_dir, debug=debug)
    serve(settings)


def serve(settings: Settings) -> None:
    """Open the data dir and serve the API until interrupted."""
    log_config = logging_config(settings.debug)
    logging.config.dictConfig(log_config)
    try:
        node = Node(Store(settings.data_dir))
    except NixieError as exc:
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
    uvicorn.Server(config).run()


def logging_config(debug: bool) -> dict[str, Any]:
    """Return uvicorn's logging set-up with Nixie's loggers added."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
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
