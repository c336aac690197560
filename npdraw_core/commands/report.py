"""`npdraw report RUN_DIR… --out report.md`: a Markdown page of runs side by side (configs, final metrics,
training curves, sample grids with canvases, the parse figure, links to the artefacts)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a Markdown report of run directories: configs, metrics, curves, samples",
        description="Figures are written beside the page, in OUT_STEM_files/ (e.g. report_files/).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, e.g. runs/demo")
    parser.add_argument("--out", required=True, help="the Markdown file to write, e.g. report.md")
    parser.set_defaults(handler=_report)


def _report(args) -> None:
    from npdraw_core.report import write_report

    out = write_report(args.run_dirs, args.out)
    print(f"wrote {out} (figures in {out.parent / (out.stem + '_files')})")
