#!/usr/bin/env python
"""Plot the loss curves of a run's metrics.json into a PNG.

    python tools/plot_metrics.py output/metrics.json [--output output/loss.png] [--keys k1 k2]
"""

from __future__ import annotations

import argparse
import os

from assigndet.utils.visualizer import plot_loss_curves


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="a metrics.json written by training")
    parser.add_argument("--output", default=None,
                        help="PNG path (default: loss_curves.png next to the metrics file)")
    parser.add_argument("--keys", nargs="*", default=None,
                        help="scalars to plot (default: every name containing 'loss')")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.metrics):
        parser.error(f"{args.metrics} does not exist")
    output = args.output or os.path.join(os.path.dirname(args.metrics), "loss_curves.png")
    keys = plot_loss_curves(args.metrics, output, args.keys)
    print(f"Plotted {', '.join(keys)} to {output}")
    return output


if __name__ == "__main__":
    main()
