"""What benchmarks write besides their tables on screen: CSV files, and matplotlib loaded for their plots."""
import csv

__all__ = ["write_csv", "pyplot"]


def write_csv(path, columns, rows, digits=6):
    """A CSV file with a header of `columns` and one line per dict of `rows` (a missing key or None: an empty
    cell), floats to `digits` significant figures (None: as Python prints them)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.{digits}g}" if isinstance(v, float) and digits is not None else v)
                        for k, v in r.items()})


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (said on screen) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plots")
        return None
    return plt
