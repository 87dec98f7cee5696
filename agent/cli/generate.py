"""`synthehr train` and `synthehr generate`: train a DP generator, generate a synthetic cohort."""

from __future__ import annotations

from typing import Optional

import typer


def _proportions(items: list[str] | None) -> list[str] | None:
    return list(items) if items else None


def _observations(value: Optional[str]) -> int | list[str] | None:
    if value is None or value == "":
        return None
    if value.strip().isdigit():
        return int(value.strip())
    return [v.strip() for v in value.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        source: str = typer.Argument(..., help="Registered data source, e.g. nhanes-2017-2018 (see `synthehr sources list`)."),
        epsilon: float = typer.Option(..., "--epsilon", "-e", help="Privacy budget epsilon to spend (charged to the source's ledger)."),
        delta: Optional[float] = typer.Option(None, "--delta", help="Privacy delta (default: min(config, 1/n^1.1))."),
        accountant: Optional[str] = typer.Option(None, "--accountant", help="Privacy accountant: prv (default) or rdp."),
        conditions: Optional[str] = typer.Option(None, "--conditions", help="Comma-separated conditioning columns, e.g. diabetes,sex."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default from config)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for weight initialisation and latent noise only: privacy noise is secure, so retraining gives a different model."),
        session: str = typer.Option("default", "--session", help="Session name (remembers the last model)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Train a differentially private conditional GAN on a data source."""
        from synthehr.agent.cli.common import deps, print_json
        from synthehr.tools.base import TqdmProgress
        from synthehr.tools.train_generator import TrainGeneratorArgs, train_generator

        d = deps(session=session, progress=TqdmProgress(disable=as_json))
        conds = [c.strip() for c in conditions.split(",") if c.strip()] if conditions else None
        args = TrainGeneratorArgs(source=source, epsilon=epsilon, delta=delta, conditions=conds, epochs=epochs,
                                  accountant=accountant, seed=seed)
        result = train_generator(d, args)
        d.save_session()
        if as_json:
            print_json(result.data)
        else:
            typer.echo(result.text)

    @app.command("generate")
    def generate(
        condition: Optional[str] = typer.Option(None, "--condition", help='Condition of the cohort, e.g. "type 2 diabetes" (optional with --source).'),
        n: Optional[int] = typer.Option(None, "-n", "--n", help="Number of synthetic patients (default from config)."),
        observations: Optional[str] = typer.Option(None, "--observations", help="How many key observations (e.g. 20) or a comma-separated list of names."),
        population: Optional[str] = typer.Option(None, "--population", help='Population, e.g. "US".'),
        filters: Optional[list[str]] = typer.Option(None, "--filter", help='Cohort filter, repeatable, e.g. "age_years>=65".'),
        proportions: Optional[list[str]] = typer.Option(None, "--proportion", help='Target share, repeatable, e.g. "sex=female:0.4".'),
        epsilon: Optional[float] = typer.Option(None, "--epsilon", "-e", help="Privacy epsilon if a new model must be trained."),
        source: Optional[str] = typer.Option(None, "--source", help="Data source to use (overrides --population)."),
        where: Optional[list[str]] = typer.Option(None, "--where", help='With --source and no --condition: a filter, repeatable, e.g. "sex=female".'),
        model: Optional[str] = typer.Option(None, "--model", help="With --source: the saved model to sample from (default: newest fitting one)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same model and seed, same records)."),
        session: str = typer.Option("default", "--session", help="Session name (remembers the last data set)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Generate a synthetic cohort: CSV + Parquet + data card, never more privacy than asked."""
        from synthehr.agent.cli.common import deps, print_json
        from synthehr.tools.base import TqdmProgress
        from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort, generate_from_source

        d = deps(session=session, progress=TqdmProgress(disable=as_json))
        if condition is None:
            if not source:
                raise typer.BadParameter("give --condition (a profiled condition) or --source (any registered source)")
            result = generate_from_source(d, source, n, where=[*(where or []), *(filters or [])], model_id=model,
                                          seed=seed, epsilon=epsilon)
            d.save_session()
            if as_json:
                print_json({**result.data, "text": result.text})
            else:
                typer.echo(result.text)
            return
        args = GenerateCohortArgs(condition=condition, n=n, observations=_observations(observations),
                                  population=population, filters=list(filters) if filters else None,
                                  proportions=_proportions(proportions), epsilon=epsilon, seed=seed, source=source)
        result = generate_cohort(d, args)
        d.save_session()
        if as_json:
            data = {k: v for k, v in result.data.items() if k != "card"}
            print_json({**data, "text": result.text})
        else:
            typer.echo(result.text)
