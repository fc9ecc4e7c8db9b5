"""``python -m mhc_array info`` and ``python -m mhc_array bench [--quick]``."""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mhc_array",
                                     description="mhc_array command line")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the configuration (backends, ISA, threads, "
                                       "library versions)")
    info.add_argument("--json", action="store_true", help="print it as JSON (for machines)")
    bench = sub.add_parser("bench", help="run the benchmark workloads of the design notes")
    bench.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="DIR|FILE.png",
                       help="also draw charts (matplotlib): a directory of PNG charts, or "
                            "only the main chart (speed-ups) when the path ends in .png")
    bench.add_argument("--from-json", metavar="FILE",
                       help="measure nothing: print and (with --plot) chart the results "
                            "a previous run saved with --json")
    bench.add_argument("--only", metavar="SUBSTRING", action="append",
                       help="run only the workloads whose name contains SUBSTRING")
    bench.add_argument("--threads", type=int, default=1,
                       help="threads for every candidate (default 1; the best native "
                            "level also runs at 2, labelled x2)")
    bench.add_argument("--compile", dest="compile_peers", action="store_true", default=None,
                       help="include torch.compile peers (default: only in the full run)")
    bench.add_argument("--no-compile", dest="compile_peers", action="store_false")
    bench.add_argument("--gpu", action="store_true",
                       help="instead: the GPU workloads (W1-W4 on CUDA tensors through the "
                            "cupy backend against torch eager and torch.compile on the same "
                            "device); listed as skipped where CuPy sees no CUDA device")
    bench.add_argument("--dask", metavar="ROWS", type=int,
                       help="instead: W2 on ROWS x 1024 float32 generated on a local "
                            "2-worker dask.distributed cluster (e.g. 2000000: 8 GB)")
    bench.add_argument("--curvature", action="store_true",
                       help="instead: Ollivier-Ricci curvature against GraphRicciCurvature")
    args = parser.parse_args(argv)
    if args.command == "info":
        if args.json:
            import json
            from . import config
            print(json.dumps(config(), indent=2))
        else:
            from . import show_config
            show_config()
        return 0
    if args.curvature:
        from .bench import run_curvature
        return run_curvature(json_path=args.json)
    if args.dask:
        from .bench import run_dask
        return run_dask(rows=args.dask)
    if args.from_json:
        from .bench import replot
        return replot(args.from_json, args.plot)
    from .bench import run
    return run(quick=args.quick, json_path=args.json, plot_path=args.plot, only=args.only,
               threads=args.threads, compile_peers=args.compile_peers, gpu=args.gpu)


def _run(argv=None):
    """main(), quiet when the reader of stdout goes away (``... info | head -1``)."""
    try:
        return main(argv)
    except BrokenPipeError:
        # the rest of the output has nowhere to go: point stdout at devnull so that
        # Python's exit-time flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(_run())
