"""yarn-jax sweep CONFIG: grids of rope methods x scales x fine-tuning budgets x seeds x hyperparameters.

    yarn-jax sweep configs/sweeps/repro_small.yaml                      # everything, on this machine
    yarn-jax sweep configs/sweeps/repro_small.yaml --list               # the cells and their state
    yarn-jax sweep configs/sweeps/smollm2_ablation.yaml --cell yarn-s2 --cell none   # only these cells

Without options: set up the base model, run every unfinished cell, then gather the tables and plots.
On a cluster: `--emit-commands` prints (and writes to OUT/commands.txt) the setup command, one command
per cell and the gather command; run the setup once, the cells anywhere that sees OUT, then gather."""

from __future__ import annotations

import sys


from yarn_jax.errors import CommandHelp, CommandParser, command
from yarn_jax.sweep.config import load_sweep
from yarn_jax.sweep.runner import Sweep
from yarn_jax.progress import console as log_console


@command
def main(argv: list[str] | None = None) -> int:
    ap = CommandParser(prog="yarn-jax sweep", description=__doc__,
                                 formatter_class=CommandHelp)
    ap.add_argument("config", help="sweep YAML (configs/sweeps/*.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a config entry (value parsed as YAML), e.g. --set train.batch_size=2")
    ap.add_argument("--cell", action="append", default=[], metavar="ID", help="run only these cells")
    ap.add_argument("--setup-only", action="store_true", help="prepare the base model and stop")
    ap.add_argument("--emit-commands", action="store_true", help="print one command per unit of work")
    ap.add_argument("--gather", action="store_true", help="only build the tables and plots from finished cells")
    ap.add_argument("--list", action="store_true", help="list the cells and whether they are finished")
    args = ap.parse_args(argv)
    console = log_console()
    cfg = load_sweep(args.config, args.sets)
    sweep = Sweep(cfg, console)
    if args.list:
        for c in sweep.cells:
            print(f"{'done' if sweep.is_done(c) else 'todo'}  {c.id}")
        return 0
    if args.emit_commands:
        lines = sweep.commands(args.config, args.sets)
        sweep.out.mkdir(parents=True, exist_ok=True)
        (sweep.out / "commands.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    if args.setup_only:
        sweep.base()
        return 0
    if not args.gather:
        sweep.run(args.cell or None)
    sweep.gather()
    return 0


if __name__ == "__main__":
    sys.exit(main())
