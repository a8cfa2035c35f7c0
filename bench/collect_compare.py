"""Copy a finished `biasunlearn compare` folder's small files into bench/results/<name>/ (reports, figures, each
method's results.json, training logs and dev curves; no adapters, no per-example predictions; the seed folders of
`compare --seeds` too), and print the report's tables with their headings one level down, ready for BENCHMARKS.md.

    python bench/collect_compare.py runs/compare bench/results/compare --sections "StereoSet,CrowS-Pairs,BBQ,Cost"
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SMALL = ("results.json", "log.jsonl", "dev_log.jsonl", "train_summary.json", "train_measure.json",
         "method_settings.json", "config.json")
LIMIT = 1 << 20  # nothing over 1 MiB is committed


def collect(src: Path, dst: Path) -> list[Path]:
    out = []
    dst.mkdir(parents=True, exist_ok=True)
    for f in ["report.md", "report.html", "compare.json", "splits.json", "compare_seeds.json", "seeds_summary.json"] + [
            str(p.relative_to(src)) for p in sorted((src / "figures").glob("*.png"))]:
        p = src / f
        if p.exists() and p.stat().st_size < LIMIT:
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / f)
            out.append(dst / f)
    for m in sorted(p for p in src.iterdir() if p.is_dir() and (p / "results.json").exists()):
        for f in SMALL:
            if (m / f).exists() and (m / f).stat().st_size < LIMIT:
                (dst / m.name).mkdir(exist_ok=True)
                shutil.copy2(m / f, dst / m.name / f)
                out.append(dst / m.name / f)
    for sub in sorted(p for p in src.glob("seed-*") if p.is_dir()):  # compare --seeds: one folder per seed
        out += collect(sub, dst / sub.name)
    return out


def sections(report: str, names: list[str]) -> str:
    """The level-2 sections whose titles start with one of `names`, headings demoted one level, figures dropped."""
    keep, out = False, []
    for line in report.splitlines():
        if line.startswith("## "):
            keep = any(line[3:].startswith(n) for n in names)
        if keep and not line.startswith("!["):
            out.append("#" + line if line.startswith("#") else line)
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--sections", default="StereoSet,CrowS-Pairs,BBQ,Ablations,Cost")
    a = ap.parse_args(argv)
    files = collect(Path(a.src), Path(a.dst))
    print(f"<!-- {len(files)} files copied to {a.dst} -->", file=sys.stderr)
    print(sections((Path(a.src) / "report.md").read_text(), a.sections.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
