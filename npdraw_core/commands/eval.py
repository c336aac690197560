"""`npdraw eval`: importance-weighted NLL and Fréchet distances of a trained run. It loads the run's
model file and never trains: without one it stops with the command that trains it, and settings that
would change what the trained model means are refused (`evaluation.*` may differ)."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, trained_model_of


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="test NLL (importance-weighted bound) and FID of a trained model")
    add_run_arguments(parser)
    parser.set_defaults(handler=_eval)


def _eval(args) -> None:
    from npdraw_core.evaluation import evaluate

    run, model_file = trained_model_of(args, "eval")
    results = evaluate(run, model_file.build(run.device, registry=run.registry))
    shown = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in results.items())
    print(f"eval of {model_file.path} (epoch {model_file.info.get('epoch', '?')}): {shown or 'nothing to compute'}")
