"""``drydock tokens``: the HTTP API's tokens: create, list, revoke."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from drydock.cli.text import CliError, current_operator, when

tokens_app = typer.Typer(help="HTTP API tokens: create, list, revoke.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Option(..., "--name", "-n", help="Who or what the token is for."),
    scope: list[str] = typer.Option(
        ...,
        "--scope",
        "-s",
        help=(
            "Task-name pattern the token may enqueue and read, e.g. 'builds.*', or a "
            "permission (remediation.approve, remediation.playbooks); repeatable."
        ),
    ),
    tenant: str | None = typer.Option(
        None,
        "--tenant",
        help="Bind the token to a tenant: it sees and acts on that tenant's remediation only.",
    ),
) -> None:
    """Create an API token. It is printed once: only its hash is stored."""
    from catalog import CATALOG
    from models import tokens
    from models.db import session_scope

    try:
        with session_scope() as session:
            token, plaintext = tokens.create_token(
                session,
                name=name,
                scopes=scope,
                known_tasks=CATALOG,
                created_by=current_operator(),
                tenant=tenant,
            )
            scopes = ", ".join(token.scopes)
    except tokens.TokenError as exc:
        raise CliError(str(exc)) from None
    bound = f" for tenant {tenant}" if tenant else ""
    err.print(
        f"token {name!r}{bound} with scopes {scopes}; shown once, store it now:", highlight=False
    )
    sys.stdout.write(plaintext + "\n")


@tokens_app.command("revoke")
def tokens_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token: requests with it get 401 from now on."""
    from models import tokens
    from models.db import session_scope

    with session_scope() as session:
        if not tokens.revoke_token(session, name):
            raise CliError(f"no active token named {name!r}")
    out.print(f"revoked token {name!r}")


@tokens_app.command("list")
def tokens_list(
    all_: bool = typer.Option(False, "--all", help="Include revoked tokens."),
) -> None:
    """API tokens: names, scopes, when created and last used (never the tokens)."""
    from models import tokens
    from models.db import session_scope

    table = Table("name", "tenant", "scopes", "created", "by", "last used", "revoked")
    with session_scope() as session:
        for token in tokens.list_tokens(session, include_revoked=all_):
            table.add_row(
                token.name,
                token.tenant or "(all)",
                ", ".join(token.scopes),
                when(token.created_at),
                token.created_by or "",
                when(token.last_used_at),
                when(token.revoked_at),
            )
    out.print(table)
